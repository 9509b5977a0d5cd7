"""The PushTask web console: a small aiohttp server and a dependency-free page."""
