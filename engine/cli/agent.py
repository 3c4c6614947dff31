"""``medvision agent FILE``: the medical agent's report and trace."""

from __future__ import annotations

import argparse
from typing import Any

from engine.cli.common import (
    EXIT_BAD_INPUT,
    IMAGE_TYPES,
    disclaimer,
    load_image,
    open_engine,
    write_json,
)


def format_agent_result(result: dict[str, Any], steps: list[dict[str, Any]] | None = None) -> str:
    """The run's status, report summary and trace steps, for people."""
    lines = [f"Run {result['run_id']}  status {result['status']}  pipeline {result['pipeline']['id']} "
             f"{result['pipeline']['version']}"]
    report = result["result"].get("report")
    if report is not None:
        image = report["images"][0]
        lines.append(f"  Image {image['type']} view {image['view'] or '?'}  patient age {report['patient']['age']} "
                     f"sex {report['patient']['sex']}")
        for diagnosis in report["diagnoses"]:
            finding = next((f for f in report["findings"] if f["label"] == diagnosis["disease"]), {})
            where = " ".join(filter(None, [finding.get("side"), f"{finding['zone']} zone" if finding.get("zone")
                                           else None]))
            lines.append(f"    {diagnosis['disease']:<28} {diagnosis['confidence']:.3f}  {where}")
        for measurement in report["measurements"]:
            lines.append(f"    {measurement['name']:<28} {measurement['value']} {measurement['unit']}")
        management = report["management"]
        lines.append(f"  Follow-up: {management['suggestion']}")
        lines.append(f"    source: {management['source']}")
        narrative = report.get("narrative") or {}
        if narrative:
            lines.append(f"  Narrative ({narrative['source']}, guard {narrative['guard']['status']}):")
            lines.append(f"    Findings: {narrative['findings']}")
            lines.append(f"    Impression: {narrative['impression']}")
    else:
        lines.append(f"  {result['result']['summary']}")
    for flag in result.get("flags", []):
        lines.append(f"  !! {flag['message']} ({flag['code']}, {flag['action']})")
    if result.get("request"):
        request = result["request"]
        options = ", ".join(str(o.get("value")) for o in request["options"])
        lines.append(f"  Needs input ({request['input_type']}): {request['prompt']}  [{options}]")
    if result.get("error"):
        lines.append(f"  Error: {result['error']['type']}: {result['error']['message']}")
    lines.append("  Trace steps:")
    for step in steps if steps is not None else result["trace_summary"]["steps"]:
        latency = "-" if step["latency_ms"] is None else f"{step['latency_ms']:.0f} ms"
        lines.append(f"    {step['step_id']:<16} {step['agent'] or '':<20} {step['status'] or '':<15} {latency:>9}"
                     f"  {', '.join(step['tools'])}")
    total = result["trace_summary"]
    lines.append(f"  {total['tool_calls']} tool calls, {total['failed']} failed, {total['low_confidence']} low "
                 f"confidence, {total['total_ms']:.0f} ms")
    return "\n".join(lines)


def cmd_agent(args: argparse.Namespace) -> int:
    """Run the medical agent on an image file and print its report and trace steps."""
    context: dict[str, Any] = {}
    if args.history:
        context["clinical_history"] = args.history
    if args.pipeline:
        context["pipeline"] = args.pipeline
    if args.no_llm:
        context["use_llm"] = False
    with open_engine(args) as engine:
        session, image_id = load_image(engine, args.file, args.type)
        context["image_id"] = image_id
        print(f"MedVision agent - {disclaimer()}")
        print(f"Session {session}")
        result = engine.invoke_medical_agent(session, args.task, context=context, mode=args.mode)
        while result["status"] == "in_progress":
            print(format_agent_result(result))
            result = engine.invoke_medical_agent(session, args.task, context={"run_id": result["run_id"]},
                                                 mode=args.mode)
        print(format_agent_result(result))
        trace = engine.export_trace(result["run_id"], args.trace) if args.trace else None
        if trace is not None:
            print(f"Trace written to {args.trace}")
    write_json(args.json, result)
    return 0 if result["status"] in ("completed", "need_input") else EXIT_BAD_INPUT


def register(sub: argparse._SubParsersAction) -> None:
    """``medvision agent FILE [--task ...] [--mode auto|step_by_step] [--json OUT] [--trace OUT]``."""
    agent = sub.add_parser("agent", help="run the medical agent on an image file (report + trace)")
    agent.add_argument("file")
    agent.add_argument("--task", default="Analyse this image and write a report")
    agent.add_argument("--mode", choices=["auto", "step_by_step"], default="auto",
                       help="auto: the whole pipeline; step_by_step: print each step as it finishes")
    agent.add_argument("--history", help="clinical history (free text; names and ids are scrubbed)")
    agent.add_argument("--pipeline", help="pipeline id (default: by image type)")
    agent.add_argument("--type", choices=IMAGE_TYPES)
    agent.add_argument("--no-llm", action="store_true",
                       help="do not use the language model (pipeline order, template narrative)")
    agent.add_argument("--json", metavar="OUT", help="write the full result as JSON")
    agent.add_argument("--trace", metavar="OUT", help="write the run's trace as JSON")
    agent.set_defaults(func=cmd_agent)
