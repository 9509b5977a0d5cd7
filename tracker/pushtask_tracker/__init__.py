"""pushtask-tracker: the redirect service of tracked links, and conversions."""
