"""A tiny runner for the deploy checks: each check is a function; a failed
assert is reported with its message and the run goes on; the closing line
reads 'N passed, N failed'.  Exit 0, 1, or 77 (meson's "skipped") when a
check raises Skip before any failure."""
import sys
import traceback


class Skip(Exception):
    pass


def run(checks):
    passed = failed = skipped = 0
    for fn in checks:
        name = fn.__name__
        try:
            fn()
        except Skip as e:
            skipped += 1
            print("SKIP %s: %s" % (name, e))
        except Exception as e:  # noqa: BLE001 - report every kind of failure
            failed += 1
            print("FAIL %s: %s" % (name, e))
            if not isinstance(e, AssertionError):
                traceback.print_exc()
        else:
            passed += 1
            print("ok   %s" % name)
        sys.stdout.flush()
    line = "%d passed, %d failed" % (passed, failed)
    if skipped:
        line += ", %d skipped" % skipped
    print(line)
    if failed:
        return 1
    return 77 if skipped and not passed else 0
