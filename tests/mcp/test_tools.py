"""The MCP tools through an in-memory client: listing, the headless workflow, safety."""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import anyio
import pytest
from mcp import types
from pydicom.data import get_testdata_file

from tests.mcp import SPEC_TOOLS, connect, failed, ok


@pytest.fixture
def root(tmp_path: Path, rg1_path: Path) -> Path:
    """An allowed root holding a copy of RG1 (the chest CR)."""
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(rg1_path, folder / "rg1.dcm")
    return folder


def test_every_spec_tool_is_listed_with_a_description_and_schemas(home: Path, model_pack: Path, root: Path) -> None:
    async def scenario() -> None:
        async with connect(home, model_pack, [root]) as client:
            listed = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert SPEC_TOOLS <= set(listed)
            for tool in listed.values():
                assert tool.description and len(tool.description) > 20, tool.name
                assert tool.inputSchema["type"] == "object" and tool.outputSchema, tool.name
                for name, field in tool.inputSchema.get("properties", {}).items():
                    assert field.get("description"), (tool.name, name)
            templates = {t.uriTemplate for t in (await client.list_resource_templates()).resourceTemplates}
            assert "medvision://session/{session_id}/annotations" in templates and len(templates) == 5
            capabilities = client.get_server_capabilities()
            assert capabilities is not None and capabilities.resources.subscribe is True

    anyio.run(scenario)


def test_headless_workflow(home: Path, model_pack: Path, root: Path, tmp_path: Path) -> None:
    """create session -> add RG1 -> analyze full -> region -> annotation -> export json/pdf/sr."""
    async def scenario() -> None:
        progress: list[float] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(done)

        async with connect(home, model_pack, [root]) as client:
            session_id = (await ok(client, "create_study_session", name="headless"))["session_id"]
            added = await ok(client, "add_image_to_session", session_id=session_id,
                             image_path=str(root / "rg1.dcm"), auto_analyze=False)
            assert added["type"] == "CXR"
            full = await client.call_tool("analyze_image", {"session_id": session_id, "preset": "full"},
                                          progress_callback=on_progress)
            analysis = full.structuredContent
            assert not full.isError and analysis["classification"]["findings"]
            assert analysis["segmentation"]["status"] == "ok" and analysis["model_trained"] is False
            assert analysis["detections"]["status"] == "unavailable"
            assert progress == [0, 1]
            region = await ok(client, "analyze_selected_region", session_id=session_id,
                              region={"type": "bbox", "coordinates": [400, 500, 800, 900]},
                              question="opacity?", actions=["describe", "measure"])
            assert region["region_info"]["bbox"] == [400, 500, 800, 900] and region["annotation_id"]
            note = await ok(client, "add_annotation", session_id=session_id, annotation_type="point",
                            coordinates=[1000, 700], label="nodule?", source="user")
            await ok(client, "update_annotation", session_id=session_id, annotation_id=note["annotation_id"],
                     label="nodule")
            annotations = await ok(client, "get_annotations", session_id=session_id)
            assert annotations["count"] == 2 and {"ai", "user"} == {a["source"] for a in annotations["annotations"]}
            summary = await ok(client, "get_analysis_summary", session_id=session_id)
            assert summary["images"][0]["analyzed"] is True
            for export_format in ("json", "pdf", "dicom_sr"):
                exported = await ok(client, "export_study", session_id=session_id, format=export_format)
                assert Path(exported["export_path"]).exists(), export_format
            inside = await ok(client, "export_study", session_id=session_id, format="json",
                              output_path=str(root / "report.json"))
            assert Path(inside["export_path"]) == root / "report.json"
            view = await client.call_tool("get_visualization", {"session_id": session_id, "max_side": 256})
            image = next(c for c in view.content if isinstance(c, types.ImageContent))
            assert image.mimeType == "image/png" and max(view.structuredContent["width"],
                                                         view.structuredContent["height"]) == 256
            await ok(client, "delete_annotation", session_id=session_id, annotation_id=note["annotation_id"])
            status = await ok(client, "get_session_status", session_id=session_id)
            assert status["total_annotations"] == 1 and status["current_image"] == added["image_id"]

    anyio.run(scenario)


def test_delegation_canvas_and_user_input(home: Path, model_pack: Path, root: Path) -> None:
    """The second mode: the built-in agent does the work; the canvas and the user answer."""
    async def scenario() -> None:
        async with connect(home, model_pack, [root]) as client:
            session_id = (await ok(client, "create_study_session"))["session_id"]
            await ok(client, "add_image_to_session", session_id=session_id, image_path=str(root / "rg1.dcm"),
                     auto_analyze=False)
            capabilities = await ok(client, "get_agent_capabilities")
            assert "auto" in capabilities["modes"]
            run = await ok(client, "invoke_medical_agent", session_id=session_id, task="Analyse this chest film",
                           context={"use_llm": False})
            assert run["status"] == "completed" and run["run_id"]
            pushed = await ok(client, "push_to_canvas", session_id=session_id, action="add_annotations", payload={
                "annotations": [{"type": "bbox", "coordinates": [100, 100, 300, 300], "label": "look here"}],
                "related_suggestions": [{"type": "point", "coordinates": [500, 500], "label": "and here"}],
                "message": "Two areas to review."})
            assert len(pushed["annotation_ids"]) == 1 and len(pushed["suggestion_ids"]) == 1
            synced = await ok(client, "sync_canvas_state", session_id=session_id, canvas_state={
                "viewport": {"zoom": 1.5, "pan": {"x": 10, "y": 20}}, "active_tool": "bbox"})
            assert synced["state"]["active_tool"] == "bbox"
            error = await failed(client, "sync_canvas_state", session_id=session_id, canvas_state={"zoom": 1.5})
            assert error["code"] == "INVALID_ARGUMENT"
            request = await ok(client, "request_user_input", session_id=session_id, input_type="confirm",
                               prompt="Is this the right film?")
            assert request["status"] == "pending"
            polled = await ok(client, "get_user_input", request_id=request["request_id"])
            assert polled["status"] == "pending" and polled["user_input"] is None

    anyio.run(scenario)


def test_bad_arguments_and_unknown_ids_are_errors_and_the_session_goes_on(
        home: Path, model_pack: Path, root: Path) -> None:
    async def scenario() -> None:
        async with connect(home, model_pack, [root]) as client:
            session_id = (await ok(client, "create_study_session"))["session_id"]
            await ok(client, "add_image_to_session", session_id=session_id, image_path=str(root / "rg1.dcm"),
                     auto_analyze=False)
            cases = [
                ("get_session_status", {"session_id": "no-such-session"}, "SESSION_NOT_FOUND"),
                ("switch_image", {"session_id": session_id, "image_id": "no-such-image"}, "IMAGE_NOT_FOUND"),
                ("delete_annotation", {"session_id": session_id, "annotation_id": "nope"}, "ANNOTATION_NOT_FOUND"),
                ("get_session_status", {"session_id": "../etc"}, "INVALID_ARGUMENT"),
                ("get_session_status", {}, "INVALID_ARGUMENT"),
                ("get_session_status", {"session_id": 42}, "INVALID_ARGUMENT"),
                ("analyze_image", {"session_id": session_id, "preset": "everything"}, "INVALID_ARGUMENT"),
                ("export_study", {"session_id": session_id, "format": "docx"}, "INVALID_ARGUMENT"),
                ("analyze_selected_region", {"session_id": session_id,
                                             "region": {"type": "bbox", "coordinates": [0, 0, 5000, 10]}},
                 "INVALID_REGION"),
                ("add_annotation", {"session_id": session_id, "annotation_type": "point",
                                    "coordinates": [-5, 10]}, "INVALID_REGION"),
                ("no_such_tool", {}, "INVALID_ARGUMENT"),
            ]
            for tool, arguments, code in cases:
                error = await failed(client, tool, **arguments)
                assert error["code"] == code, (tool, arguments, error)
                assert set(error) == {"code", "message", "details"}
            assert (await ok(client, "get_session_status", session_id=session_id))["total_annotations"] == 0

    anyio.run(scenario)


def test_paths_outside_the_roots_are_refused_without_revealing_them(
        home: Path, model_pack: Path, root: Path, tmp_path: Path, rg1_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(rg1_path, outside / "secret.dcm")
    (root / "escape.dcm").symlink_to(outside / "secret.dcm")
    (root / "notes.txt").write_text("not an image\n")
    (root / "fake.dcm").write_bytes(b"\x00" * 400)
    os.mkfifo(root / "pipe.dcm")
    (root / "folder.dcm").mkdir()
    refused = {
        str(root / ".." / "outside" / "secret.dcm"): "INVALID_ARGUMENT",
        str(outside / "secret.dcm"): "INVALID_ARGUMENT",
        str(root / "escape.dcm"): "INVALID_ARGUMENT",
        "/dev/zero": "INVALID_ARGUMENT",
        str(root / "notes.txt"): "INVALID_ARGUMENT",
        str(root / "fake.dcm"): "INVALID_ARGUMENT",
        str(root / "pipe.dcm"): "INVALID_ARGUMENT",
        str(root / "folder.dcm"): "INVALID_ARGUMENT",
        "rg1.dcm": "INVALID_ARGUMENT",
        str(root / "missing.dcm"): "FILE_NOT_FOUND",
    }

    async def scenario() -> None:
        async with connect(home, model_pack, [root]) as client:
            session_id = (await ok(client, "create_study_session"))["session_id"]
            for image_path, code in refused.items():
                error = await failed(client, "add_image_to_session", session_id=session_id, image_path=image_path)
                assert error["code"] == code, (image_path, error)
                text = json.dumps(error)
                assert str(tmp_path) not in text and "/dev" not in text, text
            error = await failed(client, "export_study", session_id=session_id, format="json",
                                 output_path=str(outside / "report.json"))
            assert error["code"] == "INVALID_ARGUMENT" and str(tmp_path) not in json.dumps(error)
            assert not (outside / "report.json").exists()
            await ok(client, "add_image_to_session", session_id=session_id, image_path=str(root / "rg1.dcm"),
                     auto_analyze=False)
            assert len((await ok(client, "get_session_status", session_id=session_id))["images"]) == 1

    anyio.run(scenario)


def test_export_never_replaces_the_study_and_an_existing_file_only_when_asked(
        home: Path, model_pack: Path, root: Path, rg1_path: Path) -> None:
    source = root / "rg1.dcm"
    report = root / "report.json"
    report.write_text('{"kept": true}')
    original = source.read_bytes()

    async def scenario() -> None:
        async with connect(home, model_pack, [root]) as client:
            session_id = (await ok(client, "create_study_session"))["session_id"]
            await ok(client, "add_image_to_session", session_id=session_id, image_path=str(source), auto_analyze=False)
            for export_format in ("json", "pdf", "dicom_sr"):
                for overwrite in (False, True):
                    error = await failed(client, "export_study", session_id=session_id, format=export_format,
                                         output_path=str(source), overwrite=overwrite)
                    assert error["code"] == "EXPORT_FAILED" and error["details"]["reason"] == "protected", error
            error = await failed(client, "export_study", session_id=session_id, format="json",
                                 output_path=str(report))
            assert error["code"] == "TARGET_EXISTS" and error["details"]["names"] == ["report.json"]
            assert str(root) not in json.dumps(error)
            assert source.read_bytes() == original and report.read_text() == '{"kept": true}'
            replaced = await ok(client, "export_study", session_id=session_id, format="json",
                                output_path=str(report), overwrite=True)
            assert Path(replaced["export_path"]) == report and json.loads(report.read_text())["images"]
            assert sorted(p.name for p in root.iterdir()) == ["report.json", "rg1.dcm"]

    anyio.run(scenario)


def test_get_visualization_returns_the_png_and_writes_no_file(
        home: Path, model_pack: Path, root: Path, tmp_path: Path) -> None:
    export_root = Path(os.environ["MEDVISION_EXPORT_DIR"])

    async def scenario() -> None:
        async with connect(home, model_pack, [root]) as client:
            session_id = (await ok(client, "create_study_session"))["session_id"]
            await ok(client, "add_image_to_session", session_id=session_id, image_path=str(root / "rg1.dcm"),
                     auto_analyze=False)
            view = await client.call_tool("get_visualization", {"session_id": session_id, "max_side": 128})
            assert not view.isError, view.content
            image = next(c for c in view.content if isinstance(c, types.ImageContent))
            assert base64.b64decode(image.data).startswith(b"\x89PNG")
            assert view.structuredContent["image_path"] is None
            assert "png_base64" not in view.structuredContent

    anyio.run(scenario)
    assert not export_root.exists() or [p for p in export_root.rglob("*") if p.is_file()] == []
    assert [p for p in tmp_path.rglob("*.png")] == []


def test_client_roots_extend_the_allowed_roots(home: Path, model_pack: Path, root: Path, tmp_path: Path) -> None:
    client_root = tmp_path / "client-root"
    client_root.mkdir()
    shutil.copy(root / "rg1.dcm", client_root / "film.dcm")

    async def list_roots(_context: object) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri=client_root.as_uri(), name="films")])

    async def scenario() -> None:
        async with connect(home, model_pack, [root]) as client:
            session_id = (await ok(client, "create_study_session"))["session_id"]
            error = await failed(client, "add_image_to_session", session_id=session_id,
                                 image_path=str(client_root / "film.dcm"), auto_analyze=False)
            assert error["code"] == "INVALID_ARGUMENT"
        async with connect(home, model_pack, [root], list_roots_callback=list_roots) as client:
            added = await ok(client, "add_image_to_session", session_id=session_id,
                             image_path=str(client_root / "film.dcm"), auto_analyze=False)
            assert added["image"]["source_name"] == "film.dcm"

    anyio.run(scenario)


def test_a_timed_out_call_keeps_its_session_locked_until_the_engine_finishes(
        home: Path, model_pack: Path, root: Path) -> None:
    async def scenario() -> None:
        async with connect(home, model_pack, [root], timeout_s=0.5) as client:
            session_id = (await ok(client, "create_study_session"))["session_id"]
            await ok(client, "add_image_to_session", session_id=session_id, image_path=str(root / "rg1.dcm"),
                     auto_analyze=False)
            error = await failed(client, "analyze_image", session_id=session_id, preset="full")
            assert error["code"] == "TIMEOUT"
            # The segmentation still runs and holds the session: the next call waits for it.
            assert (await failed(client, "get_session_status", session_id=session_id))["code"] == "TIMEOUT"
            with anyio.fail_after(120):
                while (result := await client.call_tool("get_session_status", {"session_id": session_id})).isError:
                    await anyio.sleep(0.5)
            assert result.structuredContent["total_analyses"] == 1

    anyio.run(scenario)


def test_rag_index_search_and_fusion_with_progress(home: Path, model_pack: Path, root: Path) -> None:
    rows = ["image_path,report,Finding"]
    for position, name in enumerate(("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm")):
        shutil.copy(get_testdata_file(name), root / name)
        rows.append(f"{name},Reference case {position}.,{position % 2}")
    (root / "cases.csv").write_text("\n".join(rows) + "\n")

    async def scenario() -> None:
        progress: list[float] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(done)

        async with connect(home, model_pack, [root]) as client:
            built = await client.call_tool("build_rag_index", {"data_path": str(root / "cases.csv")},
                                           progress_callback=on_progress)
            assert not built.isError, built.content[0].text
            assert len(progress) >= 3, progress  # start, per image, end
            error = await failed(client, "build_rag_index", data_path="/etc")
            assert error["code"] == "INVALID_ARGUMENT"
            session_id = (await ok(client, "create_study_session"))["session_id"]
            await ok(client, "add_image_to_session", session_id=session_id, image_path=str(root / "rg1.dcm"),
                     auto_analyze=False)
            similar = await ok(client, "search_similar_cases", session_id=session_id, top_k=2)
            assert similar["status"] == "ok"
            rows = {f"cases.csv row {row}: {name}" for row, name in
                    enumerate(("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm"), start=2)}
            assert similar["results"] and {r["source_name"] for r in similar["results"]} <= rows  # where each came from
            fused = await ok(client, "analyze_with_rag", session_id=session_id, mode="quick", top_k=2)
            assert fused["merged_labels"] is not None and fused["suggested_prompt"]
            answer = await ok(client, "ask_about_image", session_id=session_id, question="Is there an effusion?")
            assert answer["answer"]

    anyio.run(scenario)


def test_only_files_the_decoder_reads_pass_the_path_check_and_metadata_is_capped(
        home: Path, model_pack: Path, root: Path) -> None:
    """JPEG 2000 and TIFF passed the path check, then failed to decode; a 50 MB metadata value was stored
    (issue 14, item 10)."""
    (root / "scan.jp2").write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 200)
    (root / "scan.j2k").write_bytes(b"\xff\x4f\xff\x51" + b"\x00" * 200)
    (root / "scan.tif").write_bytes(b"II*\x00" + b"\x00" * 200)
    (root / "scan.tiff").write_bytes(b"MM\x00*" + b"\x00" * 200)

    async def scenario() -> None:
        async with connect(home, model_pack, [root]) as client:
            session_id = (await ok(client, "create_study_session"))["session_id"]
            for name in ("scan.jp2", "scan.j2k", "scan.tif", "scan.tiff"):
                error = await failed(client, "add_image_to_session", session_id=session_id,
                                     image_path=str(root / name))
                assert error["code"] == "UNSUPPORTED_FORMAT" and error["details"]["reason"] == "unsupported_format"
            assert (await ok(client, "get_session_status", session_id=session_id))["images"] == []
            error = await failed(client, "create_study_session", name="big", metadata={"notes": "x" * 70_000})
            assert error["code"] == "INVALID_ARGUMENT" and error["details"]["reason"] == "metadata_too_large"
            await ok(client, "create_study_session", name="fits", metadata={"notes": "x" * 60_000})

    anyio.run(scenario)
    from engine.api import Engine

    with Engine(home=home, model_pack=model_pack) as engine:
        assert sorted(s["name"] or "" for s in engine.list_sessions()) == ["", "fits"]
