"""Write imagenet_spark/resources/unischema.pkl: the pickled petastorm Unischema every dataset carries.

Why a shipped file: stock petastorm readers need the pickled Unischema in ``_common_metadata``, but petastorm
cannot be imported on the current stack (0.13.1 needs pyarrow < 15). The Unischema is a constant, so it is
pickled once here, on the legacy stack, and both stacks write these bytes. Rerun only when the schema in
``imagenet_spark/data/schema.py`` changes (tests/test_crossing.py fails until you do):

    .venv-legacy/bin/python tools/make_unischema_pickle.py
"""

from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path

from imagenet_spark.data.schema import UNISCHEMA_RESOURCE, imagenet_unischema, unischema_pickle_bytes

log = logging.getLogger("make_unischema_pickle")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(__file__).resolve().parent.parent / "imagenet_spark" / "resources" / UNISCHEMA_RESOURCE
    data = unischema_pickle_bytes()
    schema = pickle.loads(data)
    if list(schema.fields) != list(imagenet_unischema().fields):
        log.error("the pickle does not round-trip; not written")
        return 1
    out.write_bytes(data)
    log.info("wrote %s (%d bytes, fields %s)", out, len(data), ", ".join(schema.fields))
    return 0


if __name__ == "__main__":
    sys.exit(main())
