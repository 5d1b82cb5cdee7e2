"""Messaging and integration patterns, runnable: the code every notebook imports."""
