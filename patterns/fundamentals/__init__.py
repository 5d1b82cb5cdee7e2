"""The chapter's introduction, runnable: the building blocks every later pattern uses."""
