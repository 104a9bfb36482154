"""A script whose first line fails: workers cannot boot."""
import a_module_that_does_not_exist  # noqa: F401
