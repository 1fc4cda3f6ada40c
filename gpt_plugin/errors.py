"""The one base class for errors the person at the terminal can fix (bad gin, bad values, missing or refused files).

Every runner (train, eval, infer, convert, build_corpus) turns a `UserError` into one `ERROR: ...` line on stderr
and exit status 2, without a traceback (the trace comes with `--verbose`). Anything else is a program bug and keeps
its traceback. Raise a subclass (or `UserError` itself) with a message that names the file, key or value, and what
is allowed. Subclasses may also derive from a builtin (`ValueError`, `FileNotFoundError`) so existing `except`
clauses keep working.
"""

from __future__ import annotations


class UserError(Exception):
  """Something in the user's configuration, command line or input files is wrong; the message says what."""


class ConfigError(UserError, ValueError):
  """A gin macro or binding has a value that is not allowed (names the macro, the value and what is allowed)."""
