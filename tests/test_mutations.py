"""Mutation tests: deliberately wrong engines (tests/mutations.py) must fail export validation at
fp32, fp16 and int4, each with a one-line message naming the failing check. A mutation that a
precision has nothing to apply to (quantization scales at fp32 / fp16) is reported as n/a in the
printed summary; one that validation cannot see would fail its test, never pass silently.

Cheap by construction: one tiny export per precision (session fixtures), the reference's
expected outputs computed once per precision, each mutation a copy of those engines with one
graph edited; validation runs at frame counts 1 and 7 (max_frames 7 in a copy of the manifest)."""

from __future__ import annotations

import pytest
from mutations import MUTATIONS, NotApplicable, mutate

from sfedge.errors import ValidationError
from sfedge.export.validate import compare, int4_settings, reference_cases
from sfedge.manifest import load_manifest

PRECISIONS = ("fp32", "fp16", "int4")
MAX_FRAMES = 7
SUMMARY: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def cases(request, reference_llama):
    """precision -> (engines dir, the reference's expected outputs for it)."""
    out = {}

    def get(precision):
        if precision not in out:
            engines = request.getfixturevalue(f"engines_{precision}")
            int4 = int4_settings(engines, load_manifest(engines, verify_files=False))
            out[precision] = engines, reference_cases(reference_llama, MAX_FRAMES, int4=int4)
        return out[precision]

    return get


def validate(engines, base_cases, reference=None):
    """Export validation of `engines` (int4: the weight check re-run on these engines' graph)."""
    manifest = load_manifest(engines, verify_files=False)
    manifest["model"]["max_frames"] = MAX_FRAMES
    case = dict(base_cases)
    if "int4_weights" in case:
        from sfedge.export.int4 import check_weights

        case["int4_weights"] = check_weights(reference, engines / manifest["components"]["llm"]["path"])
    return compare(engines, manifest, case)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_unmutated_engines_pass(precision, cases, reference_llama):
    engines, base = cases(precision)
    report = validate(engines, base, reference_llama)
    assert report["passed"]
    if precision == "int4":  # both halves ran: bit-identical weights, logits vs the dequantized reference
        assert report["int4_weights"]["passed"] and report["int4_weights"]["checked"] == 11
        assert report["llm"]["rel_tol"] < 0.2 and report["chain"]["rel_tol"] < 0.2


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_mutation_fails_validation(mutation, precision, cases, reference_llama, tmp_path):
    engines, base = cases(precision)
    try:
        wrong = mutate(engines, tmp_path / "wrong", mutation)
    except NotApplicable as e:
        SUMMARY[(mutation, precision)] = f"n/a ({e})"
        pytest.skip(f"{mutation} at {precision}: {e}")
    with pytest.raises(ValidationError) as err:
        validate(wrong, base, reference_llama)
    message = str(err.value)
    SUMMARY[(mutation, precision)] = message.removeprefix("export failed validation: ")
    assert message.startswith("export failed validation: ") and "\n" not in message


def test_zz_mutation_summary():
    """Printed (-s): which checks caught each mutation at each precision."""
    if not SUMMARY:
        pytest.skip("no mutation ran")
    print("\nmutation x precision -> failing checks")
    for (mutation, precision), what in sorted(SUMMARY.items()):
        print(f"  {mutation:13s} {precision:5s} {what[:200]}")
