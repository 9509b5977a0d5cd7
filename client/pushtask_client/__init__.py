"""The user tools' side of PushTask: `kubectl push` (cli), the task API as people's tools
use it (taskapi) and the lifecycle actions they plan (actions). The web console uses the
last two; the operator and the worker use none of it."""
