"""A behaviour comparison in the workbench, driven as a person drives it: File → Open Comparison…, the
section and contrast selectors, the ranked differences table and the behaviour graph selecting each
other (one refresh each way), the intervention checks of the selected node, the model A/B toggle, and
a case opened in the workbench by a double-click or Enter; bad files and missing sessions are one
sentence and the app carries on. No model is loaded to browse. (Any exception escaping a slot fails
the test: pytest-qt's capture.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, QSettings, Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication, QFileDialog

from core.behaviour.browse import SELECTION, contrast_title, section_title
from core.behaviour.layout import behaviour_layout
from core.behaviour.study import FIXED_KEYS, load_comparison
from core.report_comparison import EFFECT_SCALE
from core.report_comparison import effect_colour as report_colour
from desktop.app import MainWindow
from desktop.comparison import KEY_ROLE, PER_LAYER, PLAIN_PEN, SIGNIFICANT_PEN, SORT_ROLE


@pytest.fixture
def main(qtbot, tmp_path):
    """A bare workbench window: no model chosen, none loaded."""
    w = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(w)
    w.show()
    return w


def open_via_menu(qtbot, w, monkeypatch, path):
    """File → Open Comparison…, the dialog answered with ``path``; returns the comparison window."""
    asked = []
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: asked.append(a) or (str(path), ""))
    w.actions["file.open_comparison"].trigger()
    assert len(asked) == 1
    cw = w.comparisons.window
    if cw is not None and cw.isVisible():
        qtbot.waitExposed(cw)
    return cw


def table_keys(cw) -> list[str]:
    t = cw.table
    return [t.model().index(r, 1).data(KEY_ROLE) for r in range(t.model().rowCount())]


def click_row(qtbot, table, row: int) -> None:
    index = table.model().index(row, 1)
    table.scrollTo(index)
    qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton, pos=table.visualRect(index).center())


def double_click_case(qtbot, cases, row: int) -> None:
    """A person's double-click on a case: a click, then a second press that arrives as a double-click
    (QTest's mouseDClick alone sends only the latter, which an item view ignores without the first)."""
    pos = cases.visualItemRect(cases.item(row, 0)).center()
    qtbot.mouseClick(cases.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    qtbot.mouseDClick(cases.viewport(), Qt.MouseButton.LeftButton, pos=pos)


def node_point(plot, key: str) -> QPoint:
    """Where node ``key`` is drawn on the plot's viewport, in pixels."""
    x, y = plot.node_position(key)
    return plot.plot.mapFromScene(plot.plot.getViewBox().mapViewToScene(QPointF(x, y)))


def ring_at(plot):
    xs, ys = plot.ring.getData()
    return list(zip(xs.tolist(), ys.tolist()))


def copy_of(comparison_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "study"
    shutil.copytree(comparison_dir, out)
    return out


def test_open_comparison_shows_header_selectors_differences_and_graph_without_a_model(qtbot, main, monkeypatch,
                                                                                   comparison_dir):
    cw = open_via_menu(qtbot, main, monkeypatch, comparison_dir / "comparison.json")
    doc = load_comparison(comparison_dir)
    assert cw.isVisible() and cw.parent() is main
    assert "tiny-study" in cw.title.text() and "10 cases ok, 0 failed" in cw.title.text()
    assert "model A: llama" in cw.models_label.text() and "model B: llama_b" in cw.models_label.text()
    assert "A = x (5 cases), B = y (5 cases)" in cw.settings_label.text()
    assert "200 permutations" in cw.settings_label.text() and "α = 0.05" in cw.settings_label.text()
    combo = cw.section_combo
    assert [combo.itemText(i) for i in range(combo.count())] == [section_title(s) for s in doc["sections"]]
    section = doc["sections"][0]
    combo = cw.contrast_combo
    assert [combo.itemText(i) for i in range(combo.count())] == [contrast_title(c) for c in section["contrasts"]]
    groups = section["contrasts"][0]
    assert table_keys(cw) == [r["key"] for r in groups["rows"]]  # ranked as in the file
    headers = [cw.table.model().headerData(i, Qt.Orientation.Horizontal) for i in range(8)]
    assert headers == ["#", "Node", "Mean x", "Mean y", "Difference", "Effect size", "Corrected p", "Sig."]
    drawn, _ = behaviour_layout(section, "a", groups, PER_LAYER)
    assert [p.data() for p in cw.plot.nodes.points()] == [n.key for n in drawn]
    assert cw.version_tools["b"].isVisible() and cw.version_tools["a"].isChecked()
    assert not cw.lists.isTabVisible(1)  # attribution: no circuit edges to list
    cases = cw.cases
    assert [cases.item(r, 0).text() for r in range(cases.rowCount())] == [c["name"] for c in doc["cases"]]
    assert [cases.item(r, 1).text() for r in range(cases.rowCount())] == ["y", "x"] * 5
    # browsing loads no model and starts no job; the workbench still shows its start page
    assert main.runs.model is None and not main.runner.busy and main.state.view is None
    assert main.status.last_error is None and cw.last_error is None


def test_table_and_graph_select_each_other_once_each_way(qtbot, main, monkeypatch, comparison_dir):
    cw = open_via_menu(qtbot, main, monkeypatch, comparison_dir)  # the folder works as well as the file
    table, plot = cw.table, cw.plot
    drawn = {n.key for n in plot.drawn_nodes}
    keys = table_keys(cw)
    row = next(i for i, k in enumerate(keys) if k in drawn)
    before_plot, before_table = dict(plot.refresh_counts), dict(table.refresh_counts)
    click_row(qtbot, table, row)
    assert cw.state.selected == keys[row]
    assert ring_at(plot) == [plot.node_position(keys[row])]
    at = [n.key for n in plot.drawn_nodes].index(keys[row])
    own = [e for e in plot.all_edges if at in (e.src, e.dst)]
    assert own and plot.focus_edges.path().elementCount() == 2 * len(own)  # its own edges, drawn forward
    assert plot.refresh_counts.get(SELECTION, 0) == before_plot.get(SELECTION, 0) + 1  # one refresh of the drawing
    assert table.refresh_counts.get(SELECTION, 0) == before_table.get(SELECTION, 0)  # none bounced back
    assert keys[row] in [t.toPlainText() for t in plot.labels]

    # a click on another node of the drawing selects its row
    other = next(k for k in keys if k in drawn and k != keys[row])
    before_plot, before_table = dict(plot.refresh_counts), dict(table.refresh_counts)
    qtbot.mouseClick(plot.plot.viewport(), Qt.MouseButton.LeftButton, pos=node_point(plot, other))
    assert cw.state.selected == other and table.selected_key() == other
    assert table.refresh_counts.get(SELECTION, 0) == before_table.get(SELECTION, 0) + 1
    assert plot.refresh_counts.get(SELECTION, 0) == before_plot.get(SELECTION, 0) + 1
    assert ring_at(plot) == [plot.node_position(other)]

    # an endpoint is in the drawing but not in the table: the table lets go of its row
    qtbot.mouseClick(plot.plot.viewport(), Qt.MouseButton.LeftButton, pos=node_point(plot, "logits"))
    assert cw.state.selected == "logits" and table.selected_key() is None
    assert "not checked by intervention" in cw.checks.toPlainText()

    # the keyboard walks the table, the drawing follows
    click_row(qtbot, table, 0)
    table.setFocus()
    qtbot.keyClick(table, Qt.Key.Key_Down)
    assert cw.state.selected == keys[1] == table.selected_key()
    expected = [plot.node_position(keys[1])] if keys[1] in drawn else []
    assert ring_at(plot) == expected


def test_sorting_by_a_column_keeps_the_selection(qtbot, main, monkeypatch, comparison_dir):
    cw = open_via_menu(qtbot, main, monkeypatch, comparison_dir)
    table = cw.table
    click_row(qtbot, table, 2)
    key = cw.state.selected
    header = table.horizontalHeader()
    qtbot.mouseClick(header.viewport(), Qt.MouseButton.LeftButton,
                     pos=QPoint(header.sectionViewportPosition(5) + 8, header.height() // 2))  # Effect size
    values = [table.model().index(r, 5).data(SORT_ROLE) for r in range(table.model().rowCount())]
    assert values in (sorted(values), sorted(values, reverse=True)) and len(set(values)) > 1
    assert header.sortIndicatorSection() == 5
    assert table.selected_key() == key == cw.state.selected  # the same node, wherever its row went


def test_the_checks_of_the_selected_node_are_shown_under_the_table(qtbot, main, monkeypatch, comparison_dir):
    cw = open_via_menu(qtbot, main, monkeypatch, comparison_dir)
    section = load_comparison(comparison_dir)["sections"][0]
    assert "Select a node" in cw.checks.toPlainText()
    checked = section["checks"][0]
    keys = table_keys(cw)
    click_row(qtbot, cw.table, keys.index(checked["key"]))
    text = cw.checks.toPlainText()
    assert "Zero-ablation at every position but the start token" in text
    for group, v in checked["groups"].items():
        assert f"{group} — {v['cases']} cases: answer changed in {v['answer_changed']:.0%}" in text
    unchecked = next(k for k in keys if k not in {c["key"] for c in section["checks"]})
    click_row(qtbot, cw.table, keys.index(unchecked))
    assert cw.checks.toPlainText().startswith(f"{unchecked} was not checked by intervention")


def test_contrast_section_and_model_b_selectors(qtbot, main, monkeypatch, comparison_dir):
    cw = open_via_menu(qtbot, main, monkeypatch, comparison_dir)
    doc = load_comparison(comparison_dir)
    section = doc["sections"][0]
    versions = section["contrasts"][1]
    click_row(qtbot, cw.table, 0)
    kept = cw.state.selected
    cw.contrast_combo.setCurrentIndex(1)  # model A vs model B
    assert table_keys(cw) == [r["key"] for r in versions["rows"]]
    assert cw.table.model().headerData(2, Qt.Orientation.Horizontal) == "Mean A"
    assert cw.state.selected == kept and cw.table.selected_key() == kept  # the same node, in the other contrast
    assert "paired permutation test" in cw.note.text()
    # model B's behaviour graph, coloured by the same contrast
    qtbot.mouseClick(cw.version_tools["b"], Qt.MouseButton.LeftButton)
    assert cw.state.version == "b" and cw.version_tools["b"].isChecked()
    drawn, _ = behaviour_layout(section, "b", versions, PER_LAYER)
    assert [p.data() for p in cw.plot.nodes.points()] == [n.key for n in drawn]
    assert "model B" in cw.plot.caption.text()
    # the circuit section: its own rows, its circuit edges gained and lost, model A again
    cw.section_combo.setCurrentIndex(1)
    circuit = doc["sections"][1]
    assert cw.state.version == "a" and cw.state.selected is None and cw.contrast_combo.currentIndex() == 0
    assert table_keys(cw) == [r["key"] for r in circuit["contrasts"][0]["rows"]]
    assert cw.lists.isTabVisible(1) and cw.edge_table.rowCount() == len(circuit["edge_changes"])
    assert cw.edge_table.item(0, 0).text() == circuit["edge_changes"][0]["edge"]
    assert any(n.key == "input" and n.y == -1 for n in cw.plot.drawn_nodes)


def test_colours_rings_and_sizes_of_the_drawing(qtbot, main, monkeypatch, comparison_dir, tmp_path):
    """Colour = effect size as the PDF report draws it (blue higher in A, red higher in B, grey not
    compared), a dark ring = significant, size = mean influence: on a copy of the comparison with two
    rows made a clear difference each way."""
    folder = copy_of(comparison_dir, tmp_path)
    doc = json.loads((folder / "comparison.json").read_text(encoding="utf-8"))
    section = doc["sections"][0]
    rows = section["contrasts"][0]["rows"]
    drawn, _ = behaviour_layout(section, "a", section["contrasts"][0], PER_LAYER)
    drawn_keys = [n.key for n in drawn]
    up, down = [r for r in rows if r["key"] in drawn_keys][:2]
    up.update(effect_size=1.5, significant=True, tested=True, p_adjusted=0.01)
    down.update(effect_size=-1.5, significant=False, tested=True)
    (folder / "comparison.json").write_text(json.dumps(doc), encoding="utf-8")
    cw = open_via_menu(qtbot, main, monkeypatch, folder)
    spots = {p.data(): p for p in cw.plot.nodes.points()}
    blue, red = spots[up["key"]].brush().color(), spots[down["key"]].brush().color()
    assert blue.blue() > blue.red() + 60 and red.red() > red.blue() + 60
    assert (blue.name(), red.name()) == (report_colour(1.5 / EFFECT_SCALE), report_colour(-1.5 / EFFECT_SCALE))
    for key in FIXED_KEYS:
        if key in spots:
            assert spots[key].brush().color().hsvSaturation() < 70  # grey
    assert spots[up["key"]].pen().widthF() == SIGNIFICANT_PEN.widthF()
    assert spots[down["key"]].pen().widthF() == PLAIN_PEN.widthF()
    means = {n.key: abs(n.mean) for n in drawn if n.key not in FIXED_KEYS}
    by_mean = sorted(means, key=means.get)
    sizes = [spots[k].size() for k in by_mean]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]
    assert "effect size: x − y" in cw.plot.colorbar.axis.labelText and "blue: higher in x than in y" in cw.plot.legend.text()
    # hovering a node names it with its figures (the pointer finds the topmost window under it, and the
    # offscreen platform raises none: the workbench is put away first)
    main.hide()

    def hovering() -> bool:  # where the node is now on screen (the window may still be settling)
        qtbot.mouseMove(cw.plot.plot.viewport(), node_point(cw.plot, up["key"]))
        return up["key"] in cw.plot.plot.getViewBox().toolTip()

    qtbot.waitUntil(hovering, timeout=5_000)
    tip = cw.plot.plot.getViewBox().toolTip()
    assert "effect size +1.50" in tip and "corrected p 0.01" in tip and "significant" in tip


def test_a_case_opens_its_session_in_the_workbench_by_double_click_or_enter(qtbot, main, monkeypatch, comparison_dir):
    cw = open_via_menu(qtbot, main, monkeypatch, comparison_dir)
    cases = cw.cases
    double_click_case(qtbot, cases, 1)
    expected = (comparison_dir / "a" / "c1.cdesk").resolve()
    assert Path(main.documents.session_path) == expected, main.status.last_error
    assert main.state.view is not None and main.state.view.kind == "attribution"
    assert main.central.currentWidget() is main.workspace and main.workspace.currentWidget() is main.graph_pane
    assert main.windowTitle().startswith("c1.cdesk —")
    # model B's session of a circuit case, with the keyboard
    qtbot.mouseClick(cw.version_tools["b"], Qt.MouseButton.LeftButton)
    row = next(r for r in range(cases.rowCount()) if cases.item(r, 0).text() == "p2")
    cases.setFocus()
    cases.setCurrentCell(row, 0)
    qtbot.keyClick(cases, Qt.Key.Key_Return)
    assert Path(main.documents.session_path) == (comparison_dir / "b" / "p2.cdesk").resolve()
    assert main.state.view.kind == "circuit"
    assert main.status.last_error is None and cw.last_error is None


def test_a_missing_or_failed_session_is_one_sentence(qtbot, main, monkeypatch, comparison_dir, tmp_path):
    folder = copy_of(comparison_dir, tmp_path)
    (folder / "a" / "c2.cdesk").unlink()
    doc = json.loads((folder / "comparison.json").read_text(encoding="utf-8"))
    doc["cases"][3]["runs"]["a"].update(status="failed", error="out of memory", session=None)
    (folder / "comparison.json").write_text(json.dumps(doc), encoding="utf-8")
    cw = open_via_menu(qtbot, main, monkeypatch, folder)
    cases = cw.cases
    double_click_case(qtbot, cases, 2)
    assert cw.error_box is not None and cw.error_box.isVisible()
    text = cw.error_box.text()
    assert "case 'c2' on model A is missing" in text and "c2.cdesk does not exist" in text
    assert "\n" not in text and "Traceback" not in text
    assert main.state.view is None and main.documents.session_path is None  # nothing half-opened
    cw.error_box.done(0)
    double_click_case(qtbot, cases, 3)
    assert "case 'c3' on model A failed (out of memory), so it has no session to open" in cw.error_box.text()
    assert "failed: out of memory" in cases.item(3, cases.columnCount() - 1).text()
    cw.error_box.done(0)
    # the app carries on: another case opens
    double_click_case(qtbot, cases, 0)
    assert Path(main.documents.session_path) == (folder / "a" / "c0.cdesk").resolve()


@pytest.mark.parametrize("damage, sentence", [
    (lambda p, doc: p.write_text("{ not json", encoding="utf-8"), "is not a comparison file"),
    (lambda p, doc: p.write_text(json.dumps({"format": "something else"}), encoding="utf-8"),
     "is not a Circuit Desk comparison"),
    (lambda p, doc: p.unlink(), "does not exist; open the comparison.json"),
    (lambda p, doc: p.write_text(json.dumps({**doc, "sections": [{**doc["sections"][0], "contrasts": [
        {k: v for k, v in c.items() if k != "label_a"} for c in doc["sections"][0]["contrasts"]]}]}), encoding="utf-8"),
     "sections.contrasts.label_a is missing or has the wrong type"),
    (lambda p, doc: p.write_text(json.dumps({**doc, "cases": [{**doc["cases"][0], "runs": {
        "a": {**doc["cases"][0]["runs"]["a"], "session": "../../etc/passwd"}}}]}), encoding="utf-8"),
     "is not inside the comparison's folder"),
    (lambda p, doc: p.write_text(json.dumps({**doc, "sections": [{**doc["sections"][0], "n_layers": 20_000}]}),
                                 encoding="utf-8"), "a section's layers are out of range"),
    (lambda p, doc: p.write_text(json.dumps({**doc, "cases": [{**doc["cases"][0], "labels": ["x"]}]}),
                                 encoding="utf-8"), "cases.labels is missing or has the wrong type"),
    (lambda p, doc: p.write_text(json.dumps({**doc, "sections": [{**s, "edge_changes": [{"edge": 1}]}
                                                                 for s in doc["sections"]]}), encoding="utf-8"),
     "sections.edge_changes.edge is missing or has the wrong type"),
], ids=["not-json", "not-a-comparison", "missing", "field-missing", "session-outside-its-folder", "huge-n-layers",
        "labels-not-a-table", "edge-change-damaged"])
def test_a_bad_comparison_file_is_one_sentence_and_the_app_stays(qtbot, main, monkeypatch, comparison_dir, tmp_path,
                                                                damage, sentence):
    folder = copy_of(comparison_dir, tmp_path)
    path = folder / "comparison.json"
    damage(path, json.loads(path.read_text(encoding="utf-8")))
    cw = open_via_menu(qtbot, main, monkeypatch, folder)
    assert cw is None  # no window half-filled
    box = main.status.error_box
    assert box is not None and box.isVisible() and sentence in box.text(), box.text()
    assert "\n" not in box.text() and "Traceback" not in box.text()
    box.done(0)
    # the app stays, and opens a good comparison next
    cw = open_via_menu(qtbot, main, monkeypatch, comparison_dir)
    assert cw.isVisible() and "tiny-study" in cw.title.text()


def test_text_where_numbers_belong_shows_as_a_dash(qtbot, main, monkeypatch, comparison_dir, tmp_path):
    """Values the window only shows (settings, a prediction's probability, a check's flips): text in a
    file from elsewhere is shown as "—", not an exception in a slot."""
    folder = copy_of(comparison_dir, tmp_path)
    path = folder / "comparison.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["settings"].update(alpha="0.05", min_recurrence="most")
    doc["cases"][0]["runs"]["a"]["probability"] = "high"
    for s in doc["sections"]:
        for chk in s["checks"]:
            for g in chk["groups"].values():
                g.update(correct_to_wrong="x", wrong_to_correct="y")
    path.write_text(json.dumps(doc), encoding="utf-8")
    cw = open_via_menu(qtbot, main, monkeypatch, folder)
    assert cw is not None and cw.isVisible()
    assert "α = —" in cw.settings_label.text() and "≥ — of cases" in cw.settings_label.text()
    assert cw.cases.item(0, 2).text().endswith("(—)")
    key = doc["sections"][0]["checks"][0]["key"]
    click_row(qtbot, cw.table, table_keys(cw).index(key))
    assert "correct → wrong —" in cw.checks.toPlainText()


def test_gui_command_line_opens_a_comparison_and_takes_its_picture(qtbot, comparison_dir, tmp_path):
    import desktop.app as app
    from desktop.cli import main

    before = {id(w) for w in QApplication.topLevelWidgets()}
    png = tmp_path / "comparison.png"
    assert main(["gui", "--comparison", str(comparison_dir), "--screenshot", str(png), "--quit-after-trace"]) == 0
    (window,) = [w for w in QApplication.topLevelWidgets() if isinstance(w, app.MainWindow) and id(w) not in before]
    qtbot.addWidget(window)  # closed after the test, as the app closes it
    cw = window.comparisons.window
    assert cw.isVisible() and "tiny-study" in cw.title.text()
    image = QImage(str(png))
    assert not image.isNull() and (image.width(), image.height()) == (cw.width(), cw.height())
    # most of the picture is the comparison, not an empty window: many distinct colours
    pixels = np.array([image.pixel(x, y) for x in range(0, image.width(), 23) for y in range(0, image.height(), 23)])
    assert len(np.unique(pixels)) > 20
