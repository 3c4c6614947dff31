"""``medvision rag build | search``: the reference-case library."""

from __future__ import annotations

import argparse
import sys

from engine.cli.common import IMAGE_TYPES, load_image, open_engine, write_json


def cmd_rag_build(args: argparse.Namespace) -> int:
    """Build or extend the reference library."""
    def progress(done: int, total: int, message: str) -> None:
        print(f"  [{done}/{total}] {message}", flush=True)

    with open_engine(args) as engine:
        result = engine.build_rag_index(data_path=args.data, reports_csv=args.reports, rebuild=args.rebuild,
                                        progress=progress)
    print(f"added {result['added']}, duplicates {result['skipped_duplicates']}, failed {len(result['failed'])}, "
          f"library size {result['index_size']} ({result['index_type']})")
    for failure in result["failed"]:
        print(f"  failed {failure['file']}: {failure['code']}: {failure['message']}", file=sys.stderr)
    return 0


def cmd_rag_search(args: argparse.Namespace) -> int:
    """Find the reference cases most similar to an image file."""
    with open_engine(args) as engine:
        session, image_id = load_image(engine, args.file, args.type)
        result = engine.search_similar_cases(session, image_id, top_k=args.top_k)
    meta = result["search_metadata"]
    print(f"library of {meta['index_size']} cases ({meta['index_type']}), search {meta['search_time_ms']:.2f} ms")
    for case in result["results"]:
        labels = ", ".join(f"{k}={v}" for k, v in case["labels"].items())
        print(f"  {case['case_id']}  similarity {case['similarity']:.3f}  {case.get('source_name', '')}  {labels}")
    for label, vote in result["aggregated_labels"].items():
        score = "-" if vote["score"] is None else f"{vote['score']:.2f}"
        print(f"  vote {label}: {score} ({vote['supporting_cases']} cases)")
    if meta.get("note"):
        print(f"  {meta['note']}")
    write_json(args.json, result)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """``rag build`` and ``rag search``."""
    rag = sub.add_parser("rag", help="reference-case library (visual RAG)").add_subparsers(dest="rag_command",
                                                                                          required=True)
    rag_build = rag.add_parser("build", help="add cases from a CSV, or a folder of images with --reports")
    rag_build.add_argument("data", help="CSV (image_path, report/findings/impression, label columns) or folder")
    rag_build.add_argument("--reports", help="reports CSV when DATA is a folder")
    rag_build.add_argument("--rebuild", action="store_true", help="start the library over")
    rag_build.set_defaults(func=cmd_rag_build)
    rag_search = rag.add_parser("search", help="similar cases for an image file")
    rag_search.add_argument("file")
    rag_search.add_argument("--top-k", type=int, default=5)
    rag_search.add_argument("--type", choices=IMAGE_TYPES)
    rag_search.add_argument("--json", metavar="OUT")
    rag_search.set_defaults(func=cmd_rag_search)
