"""Each analysis setting is declared once (``core.settings``) and every front end agrees with it: the
regenerate command, parsed by the real command-line parser, gives back the very settings it was
made from."""

import dataclasses
import shlex
import subprocess
import sys

import pytest

from core import audit, settings
from core.circuits import engine, tasks
from core.runs import circuit_command, trace_command
from core.settings import AttributionSettings, ChatSettings, CircuitSettings, PairSource, settings_from_args
from desktop.cli import build_parser

# fields that are the method's constants, recorded in sessions but offered by no front end
INTERNAL = {
    AttributionSettings: {"desired_prob", "max_logits", "update_interval", "prepend_bos"},
    CircuitSettings: {"curve"},
    PairSource: set(),
    ChatSettings: set(),
}


def parse(command: str):
    words = shlex.split(command)
    assert words[0] == "circuitdesk"
    return build_parser().parse_args(words[1:])


@pytest.mark.parametrize("given", [
    AttributionSettings(),
    AttributionSettings(max_nodes=7, batch_size=3),
    AttributionSettings(target=" Paris", foil=" London", transcoders="/models/gemma transcoders", max_nodes=12345,
                        batch_size=5, node_threshold=0.5, edge_threshold=0.125),
    AttributionSettings(target="-ing", foil="#123", node_threshold=1e-05, edge_threshold=1.0),
])
@pytest.mark.parametrize("prompt", ["The capital of France is", "-x 'quoted' \"twice\" --out", " two\nlines"])
@pytest.mark.parametrize("chat", [ChatSettings(), ChatSettings(chat=True), ChatSettings(chat=True, system="-Be brief.\n")])
def test_trace_command_round_trips(given, prompt, chat):
    args = parse(trace_command("models/My Model", prompt, given, "bfloat16", "out dir/a.cdesk", chat))
    assert args.command == "trace"
    assert settings_from_args(AttributionSettings, args) == given
    assert settings_from_args(ChatSettings, args) == chat
    assert (args.model, args.prompt, args.dtype, args.out) == ("models/My Model", prompt, "bfloat16", "out dir/a.cdesk")
    assert args.basis == "neurons"  # --basis only names the default; --transcoders chooses the other basis


SOURCES = [
    PairSource(task="ioi"),
    PairSource(task="greater-than", n_pairs=8, seed=3),
    PairSource(task="factual", n_pairs=1, seed=-2),
    PairSource(pairs_file="my pairs/p.jsonl"),
    PairSource(pairs_file="p.jsonl", n_pairs=5, seed=9),
    PairSource(prompt="When Mary and John went", corrupted="When John and Mary went"),
    PairSource(prompt="-1 is less than", corrupted="-2 is less than", answer=" 0", counterfactual="-", seed=4),
]
CIRCUITS = [
    CircuitSettings(),
    CircuitSettings(top_n=40),
    CircuitSettings(top_n=0, method="eap"),
    CircuitSettings(threshold=0.015, method="exact", metric="prob-diff"),
    CircuitSettings(target_faithfulness=0.95, steps=12, batch_size=3, method="random"),
]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("given", CIRCUITS)
def test_circuit_command_round_trips(source, given):
    given = dataclasses.replace(given, seed=source.seed)  # one --seed serves both
    args = parse(circuit_command("default", source, given, None, "float16", "c.cdesk"))
    assert args.command == "circuit"
    assert settings_from_args(PairSource, args) == source
    assert settings_from_args(CircuitSettings, args) == given
    assert (args.model, args.dtype, args.out) == ("default", "float16", "c.cdesk")


def test_circuit_command_records_the_pairs_a_file_gave():
    args = parse(circuit_command("default", PairSource(pairs_file="p.jsonl"), CircuitSettings(), n_used=17))
    assert settings_from_args(PairSource, args) == PairSource(pairs_file="p.jsonl", n_pairs=17)
    args = parse(circuit_command("default", PairSource(task="ioi", n_pairs=8), CircuitSettings(), n_used=6))
    assert settings_from_args(PairSource, args).n_pairs == 8  # a task regenerates from the count asked for


def test_one_seed_cannot_say_two_things():
    with pytest.raises(ValueError, match="--seed"):
        circuit_command("default", PairSource(task="ioi", seed=1), CircuitSettings(seed=2))


@pytest.mark.parametrize("settings_type", [AttributionSettings, CircuitSettings, PairSource, ChatSettings])
def test_every_field_is_declared_and_every_declaration_is_a_field(settings_type):
    declared = settings.DECLARATIONS[settings_type]
    fields = {f.name: f for f in dataclasses.fields(settings_type)}
    stored = [s for s in declared if s.stored]
    assert sorted(s.name for s in stored) == sorted(fields)
    assert {s.name for s in stored if not s.flag} == INTERNAL[settings_type]
    for s in stored:
        assert s.default == fields[s.name].default and s.type in (int, float, str, bool)
        assert not s.flag or s.help
    for s in declared:
        assert not s.choices or s.default is None or s.default in s.choices
        assert set(s.gui_choices) <= set(s.choices)


def test_the_parser_defaults_are_the_dataclass_defaults():
    trace = build_parser().parse_args(["trace", "--prompt", "x", "--out", "x.cdesk"])
    assert settings_from_args(AttributionSettings, trace) == AttributionSettings()
    circuit = build_parser().parse_args(["circuit", "--task", "ioi", "--out", "x.cdesk"])
    assert settings_from_args(CircuitSettings, circuit) == CircuitSettings()
    assert settings_from_args(PairSource, circuit) == PairSource(task="ioi")
    assert build_parser().parse_args(["predict", "--prompt", "x"]).top_k == settings.by_name(
        settings.PREDICT_SETTINGS)["top_k"].default


def test_mutually_exclusive_flags_stay_exclusive():
    neurons = "".join(["neu", "rons"])  # as from a real command line: argparse ignores the default object itself
    for words in (["trace", "--prompt", "x", "--out", "x.cdesk", "--basis", neurons, "--transcoders", "t"],
                  ["circuit", "--task", "ioi", "--top-n", "3", "--threshold", "0.1", "--out", "x.cdesk"],
                  ["circuit", "--task", "ioi", "--pairs", "p.jsonl", "--out", "x.cdesk"],
                  ["circuit", "--out", "x.cdesk"]):  # a source of pairs is required
        with pytest.raises(SystemExit):
            build_parser().parse_args(words)


def test_task_method_and_metric_lists_are_one_list():
    assert list(settings.TASKS) == ["ioi", "greater-than", "induction", "factual"]
    assert tasks.TASKS is settings.TASKS and set(tasks.TEMPLATE_MAKERS) | {"induction"} == set(settings.TASKS)
    assert tuple(engine.METRICS) == settings.METRICS
    circuit = settings.by_name(settings.CIRCUIT_SETTINGS)
    assert circuit["method"].choices == settings.METHODS and circuit["method"].offered == ("eap-ig", "eap")
    assert settings.by_name(settings.PAIR_SOURCE_SETTINGS)["task"].choices == tuple(settings.TASKS)


def test_audit_suite_keys_are_the_command_line_settings():
    flagged = lambda *groups: {s.key for g in groups for s in g if s.flag and s.stored}  # noqa: E731
    assert set(audit.ATTRIBUTION_KEYS) == flagged(settings.ATTRIBUTION_SETTINGS, settings.CHAT_SETTINGS) | {"prompt"}
    assert set(audit.CIRCUIT_KEYS) == flagged(settings.PAIR_SOURCE_SETTINGS, settings.CIRCUIT_SETTINGS)
    assert audit.CIRCUIT_KEYS["scoring"] is str and audit.CIRCUIT_KEYS["pairs"] is str  # --method, --pairs
    case = {"name": "c", "method": "circuit", "scoring": "eap", "threshold": 1, "pairs": "p.jsonl", "seed": 5}
    assert settings.settings_from_suite(CircuitSettings, case) == CircuitSettings(method="eap", threshold=1.0, seed=5)
    assert settings.settings_from_suite(PairSource, case) == PairSource(pairs_file="p.jsonl", seed=5)


def test_gui_ranges():
    panel = settings.by_name(settings.ATTRIBUTION_SETTINGS + settings.PAIR_SOURCE_SETTINGS
                             + settings.CIRCUIT_SETTINGS + settings.PREDICT_SETTINGS)
    for name, low, high, start in (("max_nodes", 10, 20000, 1000), ("n_pairs", 1, 1024, 32), ("top_k", 1, 100, 10)):
        s = panel[name]
        assert (s.minimum, s.maximum, s.initial) == (low, high, start) and s.label


def test_settings_objects_are_frozen_and_hashable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AttributionSettings().max_nodes = 3
    assert len({CircuitSettings(), CircuitSettings(), PairSource(task="ioi")}) == 2


def test_importing_settings_loads_neither_torch_nor_qt():
    code = ("import sys, core.settings, core.runs, core.manifest, core.audit\n"
            "print(sorted(m for m in ('torch', 'transformers', 'PySide6') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
