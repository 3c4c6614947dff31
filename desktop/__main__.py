"""``python -m desktop [FILES...]``: first make sure Qt can open a window here, then start the app.

The check imports no Qt (a platform plugin that cannot load makes Qt abort): it exits 2
with one ``DISPLAY_UNAVAILABLE: ...`` line instead (:mod:`desktop.platform_check`).
``--check-platform`` runs the check alone.
"""

import sys

from desktop import platform_check


def run(argv: list[str]) -> int:
    if "--check-platform" in argv:
        return platform_check.main()
    if not {"-h", "--help"} & set(argv):
        platform_check.ensure()
    from desktop.app import main

    return main(argv)


sys.exit(run(sys.argv[1:]))
