import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_models

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from tiny_models import FAMILIES, make_tiny_model  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_logs(tmp_path_factory):
    os.environ["CIRCUITDESK_LOG_DIR"] = str(tmp_path_factory.mktemp("logs"))
    os.environ["CIRCUITDESK_CONFIG_DIR"] = str(tmp_path_factory.mktemp("config"))  # remembered model paths
    os.environ["CIRCUITDESK_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))  # feature atlases


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """family -> folder of a saved tiny random model (built once per session)."""
    root = tmp_path_factory.mktemp("tiny")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = make_tiny_model(family, root / family)
        return built[family]

    return get


@pytest.fixture(scope="session")
def chat_folder(tmp_path_factory):
    """chat template (jinja) -> folder of a tiny Llama whose tokenizer carries it (built once per session)."""
    root = tmp_path_factory.mktemp("tiny-chat")
    built: dict[str, Path] = {}

    def get(template: str) -> Path:
        if template not in built:
            built[template] = make_tiny_model("llama", root / f"chat{len(built)}", chat_template=template)
        return built[template]

    return get


@pytest.fixture(scope="session")
def tiny_model(tiny_folder):
    """family -> LoadedModel (float32, CPU), loaded once per session."""
    from core.models import load_model

    loaded = {}

    def get(family: str):
        if family not in loaded:
            loaded[family] = load_model(tiny_folder(family), device="cpu")
        return loaded[family]

    return get


@pytest.fixture(scope="session")
def default_model():
    from core.models import load_model

    return load_model("default", device="cpu")


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param
