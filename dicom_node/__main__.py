"""``python -m dicom_node``: serve (default) or status; see :func:`dicom_node.scp.main`."""

import sys

from dicom_node.scp import main

if __name__ == "__main__":
    sys.exit(main())
