"""The text files of a MONAI bundle: ``LICENSE``, ``docs/README.md`` and ``configs/logging.conf``.

Kept apart from :mod:`domainfm.shared.deploy.bundle` (which writes the configs and weights) because they are
prose: the README states the bundle's input/output contract and the ``python -m monai.bundle`` commands
(MONAI Bundle specification, ``docs/source/mb_specification.rst`` in Project-MONAI/MONAI).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from domainfm.shared.deploy.card import SLIDING_WINDOW, ModelCard


def license_text(card: ModelCard) -> str:
    """``LICENSE``: Apache-2.0 for code and configs; the weights under the terms of their training data."""
    return f"""domainfm bundle {card.kind}

Code and configuration (configs/, docs/): Apache License, Version 2.0

   Copyright the domainfm developers

   Licensed under the Apache License, Version 2.0 (the "License");
   you may not use this file except in compliance with the License.
   You may obtain a copy of the License at

       http://www.apache.org/licenses/LICENSE-2.0

   Unless required by applicable law or agreed to in writing, software
   distributed under the License is distributed on an "AS IS" BASIS,
   WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
   See the License for the specific language governing permissions and
   limitations under the License.

Model weights (models/model.pt): the weights were trained by whoever exported this bundle, on their
data, starting from the pretrained encoder named in configs/metadata.json (domainfm.details). They are
bound by the terms of that training data and of that encoder's weights; the Apache-2.0 licence above
does not grant rights to them. The exporter states those terms here or in docs/data_license.txt.
"""


def readme_text(
    card: ModelCard, meta: dict[str, Any], out_shape: Sequence[int], sliding: bool, suffixes: list[str], schema_md5: str
) -> str:
    """``docs/README.md``: what the model does, its input/output contract and the MONAI commands.

    ``sliding``: inputs of any size go through the sliding window; ``suffixes``: the input files read;
    ``schema_md5``: the shipped metadata schema's md5 for ``verify_metadata``.
    """
    fmt = meta["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["post_processed_outputs"]["pred"]
    classes = len(out_shape) == 2
    fixed_size = card.output_grid == "fixed" or card.geometry == "exact"
    output = (
        "`OUTPUT_DIR/predictions.csv`: one line per input, the file path then one probability per class in "
        f"the order {', '.join(card.class_names)} (no header)."
        if classes
        else f"`OUTPUT_DIR/<input stem>_pred.npy`: float32 `[{card.out_channels}, "
        f"{', '.join(map(str, pred['spatial_shape'])) if fixed_size else 'H, W'}]` probabilities "
        f"({', '.join(card.class_names)})."
    )
    details = "\n".join(f"- {key}: {json.dumps(value)}" for key, value in card.details.items() if key != "source")
    shape = "x".join(map(str, card.spatial_shape))
    size_rule = card.input_transform.describe() + (
        f"; inputs other than {shape} are predicted with a {shape} sliding window "
        f"(overlap {SLIDING_WINDOW['overlap']}, {SLIDING_WINDOW['mode']} weights)"
        if sliding
        else ""
    )
    reading = (
        f"Files ending in {', '.join(suffixes)}, read by domainfm's own `read_input` (the reader `predict` uses: "
        "the model's domain's readers, e.g. a DICOM's display transform or a granule's calibrated bands; "
        "pictures as RGB or grey; `.npy` arrays `[channels, height, width]` without pickles)."
    )
    return f"""# domainfm {card.kind}

{meta["description"]}

Exported by domainfm {meta["required_packages_version"]["domainfm"]} with `domainfm export bundle`. The
weights are in `models/model.pt` (a plain state dict); `configs/inference.json` rebuilds the network with
`domainfm.shared.deploy.build_network` (no download) and loads them with MONAI's `CheckpointLoader`
(`torch.load(weights_only=True)`).

## Input `image`

- Files in `dataset_dir` ending in {", ".join(f"`{s}`" for s in suffixes)}.
- {card.in_channels} channel(s): {", ".join(card.channel_names)}; raw values as stored
  (range {image["value_range"] or "in the store's units"}); the network normalises them itself.
- Size: {size_rule}.
- {reading}

## Output `pred`

{output} Activation: {card.activation}.

## Model details

{details}

## Commands

Install domainfm with the export extra (`pip install 'domainfm[export]'` plus the domain's extra); `BUNDLE`
is this folder, `INPUTS` a folder of input files:

```bash
python -m monai.bundle verify_metadata --meta_file BUNDLE/configs/metadata.json \\
    --filepath SCHEMA --hash_val {schema_md5}
python -m monai.bundle verify_net_in_out network_def --meta_file BUNDLE/configs/metadata.json \\
    --config_file BUNDLE/configs/inference.json --device cpu
python -m monai.bundle run --config_file BUNDLE/configs/inference.json --meta_file BUNDLE/configs/metadata.json \\
    --bundle_root BUNDLE --dataset_dir INPUTS --output_dir PREDICTIONS
```

`SCHEMA` is the metadata schema shipped with domainfm:
`python -c "from domainfm.shared.deploy.bundle import SCHEMA_FILE; print(SCHEMA_FILE)"`. With the file
given, `verify_metadata` downloads nothing.

## Security

A bundle is code: `_target_` names any importable callable and `$` expressions are evaluated by Python
(`MONAI_EVAL_EXPR=0` disables them). Run bundles only from sources you trust.

## Licence

Code and configs: Apache-2.0. Weights: the terms of the data they were trained on; see `LICENSE`.
"""


# Standard-library handlers only (monai 1.6 refuses other `class=` values in a bundle's logging.conf).
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""
