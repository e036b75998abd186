"""One exception type for problems the user can fix (bad input, missing or wrong model files).

Entry points catch it and print its message as a single line with a non-zero exit, so users never
see a traceback for something that is their input rather than our bug.
"""


class UserError(Exception):
    """An error whose message alone tells the user what is wrong and what to do."""


def main_guard(fn):
    """Wrap a CLI main(): UserError -> one line on stderr and exit status 2."""
    import functools
    import sys

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            raise SystemExit(130)

    return wrapper
