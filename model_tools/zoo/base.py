"""The zoo's common shape: every entry prepares a ZooModel, cached under the user's cache folder."""

from __future__ import annotations

import fcntl
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..settings import ToolsSettings

# zoo name → module under model_tools.zoo that defines `build(dest: Path, **options) -> ZooModel`
ENTRIES = {
    "digits": "digits",
    "blazeface": "blazeface",
    "ppocr-rec": "ppocr",
    "ppocr-det": "ppocr",
    "ppocr-cls": "ppocr",
}


@dataclass
class ZooModel:
    name: str
    onnx: Path
    golden_inputs: Path  # .npz of sample inputs for `bundle --golden`
    task: str
    preprocessing: dict[str, Any] | None = None
    labels: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Path] = field(default_factory=dict)  # labelled evaluation data, when the entry has some

    def save(self, folder: Path) -> None:
        meta = asdict(self)
        meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in meta.items()}
        meta["data"] = {k: str(v) for k, v in self.data.items()}
        (folder / "zoo.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, folder: Path) -> ZooModel:
        meta = json.loads((folder / "zoo.json").read_text())
        meta["onnx"] = Path(meta["onnx"])
        meta["golden_inputs"] = Path(meta["golden_inputs"])
        meta["data"] = {k: Path(v) for k, v in meta.get("data", {}).items()}
        return cls(**meta)


def prepare(name: str, *, cache_dir: Path | None = None, refresh: bool = False, variant: str = "default", **options: Any) -> ZooModel:
    """Build (or reuse from the cache) the zoo model `name`."""
    if name not in ENTRIES:
        raise UsageError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ENTRIES))}")
    module = importlib.import_module(f"model_tools.zoo.{ENTRIES[name]}")
    root = (cache_dir or ToolsSettings().cache_dir) / "zoo" / f"{name}-{variant}"
    root.parent.mkdir(parents=True, exist_ok=True)
    # Tests, benchmarks and the demo may prepare the same entry at once: one builds, the others wait.
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "zoo.json").exists() and not refresh:
            model = ZooModel.load(root)
            if model.onnx.exists():
                return model
        root.mkdir(parents=True, exist_ok=True)
        model = module.build(root, name=name, **options)
        model.save(root)  # written last: its presence means the entry is complete
        return model
