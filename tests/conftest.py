import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny_models

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from tiny_models import FAMILIES, make_tiny_model  # noqa: E402


IN_CHILD = "CIRCUITDESK_TEST_CHILD"  # set in the child process an ``own_process`` test runs in


def pytest_configure(config):
    config.addinivalue_line("markers", "own_process: runs in a child pytest process of its own (for libraries "
                                       "that leave process-wide state behind, such as a Ray driver's signal "
                                       "handlers and threads)")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """An ``own_process`` test runs as ``pytest NODEID`` in a child process; this one passes or fails with it.

    Fixtures run in both: a fixture that should be shared (a cluster) hands itself down through the
    environment. The child's output is shown when it fails."""
    if pyfuncitem.get_closest_marker("own_process") is None or os.environ.get(IN_CHILD):
        return None
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", pyfuncitem.nodeid]
    out = subprocess.run(cmd, cwd=pyfuncitem.config.rootpath, env=dict(os.environ, **{IN_CHILD: "1"}),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    if out.returncode != 0:
        pytest.fail(f"in its own process (exit {out.returncode}):\n{out.stdout[-6000:]}", pytrace=False)
    return True


def pytest_sessionfinish(session, exitstatus):
    """The test process itself never loads Ray's core (see ``own_process``): a test that does fails the run."""
    if not os.environ.get(IN_CHILD) and "ray._raylet" in sys.modules:
        session.config.get_terminal_writer().line(
            "\nA test loaded Ray into the test process; mark it @pytest.mark.own_process.", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
