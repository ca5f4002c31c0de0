"""Mutation testing (``make mutation``): cosmic-ray's mutation operators over each listed module, killed or not by
that module's own fast tests only (``MODULES``), so a mutant costs seconds, not minutes.

cosmic-ray (``pip install -e ".[mutation]"``) enumerates and applies the mutants. Its usual executor runs the test
command in a fresh process per mutant (a JAX import each), and mutmut forks a process that already holds JAX's
threads, which deadlocks (``os.fork()`` and XLA). So each module runs in one worker process that imports JAX once
and, per mutant, applies it to a scratch copy of the package (``results/mutation/work/<module>``), drops the
package and test modules from ``sys.modules`` and calls ``pytest.main`` on the mapped tests (``-x``, a timeout).
Nothing in the working tree is touched.

Operators: one replacement per binary operator (``+`` <-> ``-``, ``*`` <-> ``/``, ``//`` -> ``/``, ``%`` -> ``/``,
``**`` -> ``*``), comparisons to their neighbour (``<`` <-> ``<=``, ``>`` <-> ``>=``, ``==`` <-> ``!=``,
``is`` <-> ``is not``, ``in`` <-> ``not in``), ``not`` added, ``-x`` -> ``+x``, ``and`` <-> ``or``,
``True`` <-> ``False``, numbers replaced (cosmic-ray's ``NumberReplacer``), loops emptied, exception handlers
swapped, decorators removed.

Writes ``results/mutation/scores.json`` (per module: mutants, killed, survived, equivalent, score) and
``results/mutation/survivors.txt`` (each surviving mutant not listed in ``tests/mutation_equivalent.txt``, with
its diff).

    python tests/mutation/run_mutation.py                           # every module of MODULES
    python tests/mutation/run_mutation.py rl/gae.py fl/config.py    # some (paths under fedjax_attacks/)
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "results" / "mutation"
EQUIVALENT = ROOT / "tests" / "mutation_equivalent.txt"
FAST = ["-m", "not slow"]
# module (under fedjax_attacks/) -> the fast tests that exercise it (files or node ids, `-k` expressions allowed
# as "file::-k expr")
MODULES = {
    "aggregators/coordinatewise.py": [
        "tests/test_aggregators.py::-k median_and_trimmed or (non_finite_rows and (median or trimmed)) or honest_range",
        "tests/test_aggregators.py::-k coordinatewise or median or trimmed"],
    "aggregators/sorting.py": [
        "tests/test_aggregators.py::-k batcher or order_statistic or tiled",
        "tests/test_aggregators.py::-k sorting_network or median_and_trimmed or order_statistics_method"],
    "aggregators/selection.py": [
        "tests/test_aggregators.py::-k krum or bulyan or mda or dnc or selection_rules",
        "tests/test_aggregators.py::-k krum_family or nnm_mda or (non_finite_rows and krum)",
        "tests/test_aggregators.py::-k krum or bulyan or mda or dnc"],
    "aggregators/reweighting.py": [
        "tests/test_aggregators.py::-k geometric or centered or fltrust",
        "tests/test_aggregators.py::-k geometric_median_and or (non_finite_rows and (geometric or fltrust or centered))",
        "tests/test_aggregators.py::-k geometric or fltrust or centered"],
    "aggregators/pre.py": [
        "tests/test_aggregators.py",
        "tests/test_aggregators.py::-k norm_clip_and or bucketing_matches or nnm_mda",
        "tests/test_robustness.py::-k clipped_median_drops or bucketing_drops or nnm"],
    "aggregators/_common.py": [
        "tests/test_interfaces.py::-k check_ or sq_norms or weighted_row_sum or mean_on_both or pairwise or reference_row or never_negative or smallest_sum",
        "tests/test_interfaces.py::-k distance_rules",
        "tests/test_aggregators.py::-k mean_is_not or registry"],
    "aggregators/base.py": [
        "tests/test_interfaces.py::-k aggregator_defaults or stateless_rules or check_final or chain_folds or chain_refuses or keyword_only",
        "tests/test_interfaces.py::-k chain_threads or pre_aggregator_as or half_precision or integer_input or centre_lives"],
    "aggregators/rules.py": [
        "tests/test_interfaces.py::-k mean_on_both or weighted_row_sum",
        "tests/test_aggregators.py::-k mean_is_not"],
    "aggregators/registry.py": [
        "tests/test_interfaces.py::-k registry or keyword_only",
        "tests/test_interfaces.py::-k register",
        "tests/test_aggregators.py::-k registry"],
    "attacks/base.py": [
        "tests/test_interfaces.py::-k attack_input or attack_defaults or attacks_check_positive or attack_registry or keyword_only",
        "tests/test_attacks.py::-k none_submits or registry_covers or bad_hyperparameters or full_knowledge_flags or lmp_median_goes",
        "tests/test_attacks.py::-k reference_mask"],
    "attacks/baselines.py": [
        "tests/test_attacks.py::-k eb_and or defaults or label_flip_accepts or non_finite",
        "tests/test_attacks.py::-k eb_is or ipm_makes or avg_zero or sign_flip_and or label_flip or alie or bad_hyper or full_knowledge or registry or partial_knowledge",
        "tests/test_attacks.py::-k noise_attacks"],
    "attacks/shejwalkar.py": [
        "tests/test_attacks.py::-k shejwalkar or unit_vec or thirty or one_search",
        "tests/test_attacks.py::-k minmax or minsum or shejwalkar",
        "tests/test_attacks.py::-k minmax or minsum"],
    "attacks/lmp.py": [
        "tests/test_attacks.py::-k lmp or one_search",
        "tests/test_attacks.py::-k lmp or krum_lambda"],
    "attacks/stats.py": [
        "tests/test_attacks.py::-k alie or ipm",
        "tests/test_attacks.py::-k masked or reference_mask"],
    "attacks/switch.py": [
        "tests/test_interfaces.py::-k switch",
        "tests/test_attacks.py::-k registry_covers"],
    "fl/config.py": [
        "tests/test_fl.py",
        "tests/test_fl.py::-k bad_config or refused or must_match",
        "tests/test_config_fuzz.py::-k fl_config_fuzz_validation"],
    "fl/simulation.py": [
        "tests/test_fl.py::-k sample_batch or knowledge_setting or simulation_ or scalar_index or first_non_finite",
        "tests/test_fl.py::-k python_loop or sample_clients_is_without or partial_knowledge_hides or bad_config or refused",
        "tests/test_fl.py",
        "tests/test_robustness.py::-k server_skips or label_flip_uses or raise_names",
        "tests/test_attacks_fl.py::-k label_flip or switch",
        "tests/test_interfaces.py::-k vmapped_attack_sweep or fl_params_override"],
    "frl/config.py": [
        "tests/test_frl_agreement.py",
        "tests/test_frl.py::-k config_validation or switches_count",
        "tests/test_frl_blocks.py::-k block_schedule or validation_refuses"],
    "frl/byzantine.py": [
        "tests/test_frl_agreement.py::-k byzantine_mask or broadcast_hands",
        "tests/test_frl_agreement.py::-k avg_zero_makes or large_noise_differs or alie_messages",
        "tests/test_frl_coverage.py::-k fresh_noise or random_actions_replace"],
    "frl/agreement.py": [
        "tests/test_frl_agreement.py",
        "tests/test_frl_coverage.py::-k average_agreement or fresh_noise",
        "tests/test_frl_agreement.py"],
    "frl/base.py": [
        "tests/test_frl.py::-k block_keys or make_aggregator or check_mesh or state_is or "
        "sample_blocks_match or estimates_differ or overflowing_and_nan",
        "tests/test_frl_blocks.py::-k greedy_returns",
        "tests/test_frl_sharding.py::-k mesh_without",
        "tests/test_frl.py::-k decbyzpg_with_one or decbyzpg_matches"],
    "frl/byzpg.py": [
        "tests/test_frl.py::-k plain_config or overflowing_and_nan",
        "tests/test_frl.py::-k test_byzpg_matches or centered_clipping or config_validation",
        "tests/test_frl_blocks.py::-k greedy_returns or validation_refuses",
        "tests/test_frl_sharding.py::-k mesh_without"],
    "frl/decbyzpg.py": [
        "tests/test_frl.py::-k decbyzpg_with_one or decbyzpg_matches or avg_zero or threads_the or config_validation",
        "tests/test_frl.py::-k decbyzpg_takes or two_agents_agree or overflowing_and_nan or variants_by_iterations",
        "tests/test_frl_coverage.py::-k random_actions or fresh_noise",
        "tests/test_frl_sharding.py::-k mesh_without"],
    "frl/batch.py::shape_key,group_by_shape,default_steps": [
        "tests/test_frl_blocks.py::-k validation_refuses or steps_are_checked"],
    "frl/batch.py::make_variants": [
        "tests/test_frl_blocks.py::-k validation_refuses or steps_are_checked",
        "tests/test_frl.py::-k variants_take_mesh or greedy_scores or variants_by_iterations"],
    "models/zoo.py": [
        "tests/test_models.py::-k zoo_model or get_validates",
        "tests/test_models.py::-k paper_cnn_layer_shapes"],
    "models/flat.py": [
        "tests/test_models.py::-k flat_model_contract or leading_batch",
        "tests/test_models.py::-k loss_and_accuracy or (round_trip and mlp)",
        "tests/test_models.py::-k cross_entropy or mlp"],
    "inversion/metrics.py": [
        "tests/test_models.py::-k gaussian or ssim or mse_psnr or optimal or batch_scores",
        "tests/test_inversion.py::-k ssim_psnr or l2_and_cosine or total_variation",
        "tests/test_inversion.py"],
    "rgia/metrics.py": [
        "tests/test_rgia.py::-k match_mse_and_ra or dispersion_consistency or silhouette_separates",
        "tests/test_rgia.py::-k transition_error_of_true or prior_mean_floor"],
    "rgia/experiment.py::cluster_ci,noise_like,prior_mean_scores,relative_noise_std,floors,claims": [
        "tests/test_rgia.py::-k cluster_ci or prior_mean_floor or noise_floor_gradient or relative_noise",
        "tests/test_rgia_benchmark.py::-k claims_need or readme_renderer"],
    "rl/gae.py": [
        "tests/test_rl_core.py::-k gae or n_step",
        "tests/test_rl_core.py::-k gae",
        "tests/test_rl_core.py::-k gae or n_step"],
    "rl/replay.py": [
        "tests/test_rl_core.py::-k replay or off_policy_configs or config_validation",
        "tests/test_rl_core.py::-k replay",
        "tests/test_rl_core.py::-k replay or off_policy"],
    "rl/wrappers.py": [
        "tests/test_rl_core.py::-k episode_stats or vec_env or normalize or wrapper",
        "tests/test_rl_core.py::-k vec_env or log_wrapper or running_moments or normalize_observation",
        "tests/test_rl_core.py::-k wrapper or normaliz or log_wrapper"],
    "rl/ppo.py::loss": [
        "tests/test_rl_core.py::-k ppo_loss_normalized",
        "tests/test_rl_core.py::-k ppo_loss_hand"],
    "rl/dqn.py::td_loss,epsilon": [
        "tests/test_rl_core.py::-k dqn_td_loss_terminal",
        "tests/test_rl_core.py::-k dqn_td_loss",
        "tests/test_rl_core.py::-k epsilon"],
    "rl/td3.py::td_targets,critic_loss,actor_loss": [
        "tests/test_rl_core.py::-k td3_targets_clip",
        "tests/test_rl_core.py::-k td3_targets_and_losses"],
}
REPLACEMENTS = {"Add": "Sub", "Sub": "Add", "Mul": "Div", "Div": "Mul", "FloorDiv": "Div", "Mod": "Div",
                "Pow": "Mul", "MatMult": "Mul"}
NEIGHBOURS = {"Lt": "LtE", "LtE": "Lt", "Gt": "GtE", "GtE": "Gt", "Eq": "NotEq", "NotEq": "Eq", "Is": "IsNot",
              "IsNot": "Is", "In": "NotIn", "NotIn": "In"}


def keep_operator(name: str) -> bool:
    """The curated operator set (see the module docstring)."""
    op = name.split("/", 1)[1]
    if op.startswith("ReplaceBinaryOperator_"):
        _, src, dst = op.split("_")
        return REPLACEMENTS.get(src) == dst
    if op.startswith("ReplaceComparisonOperator_"):
        _, src, dst = op.split("_")
        return NEIGHBOURS.get(src) == dst
    if op.startswith("ReplaceUnaryOperator_"):
        return op == "ReplaceUnaryOperator_USub_UAdd" or op.startswith("ReplaceUnaryOperator_Not_")
    return op in ("AddNot", "ReplaceAndWithOr", "ReplaceOrWithAnd", "ReplaceTrueWithFalse", "ReplaceFalseWithTrue",
                  "NumberReplacer", "ZeroIterationForLoop", "ExceptionReplacer", "RemoveDecorator")


def pytest_args(selection):
    """Arguments for ``pytest.main``: the files and node ids, with the ``-k`` expressions of a file joined."""
    files, keys = [], []
    for item in selection:
        path, _, k = item.partition("::-k ")
        if (ROOT / path.split("::")[0]).exists():
            files.append(path)
            if k:
                keys.append(f"({k})")
            elif "::" not in path:
                keys.append(f"({Path(path).stem})")  # everything in that file (a file name matches its tests)
    args = files + FAST + ["-x", "-qq", "--tb=no", "-p", "no:cacheprovider", "-W", "ignore"]
    return args + (["-k", " or ".join(keys)] if keys else [])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help="modules under fedjax_attacks/ (default: all of MODULES)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=0, help="at most this many mutants per module (0: all)")
    parser.add_argument("--survivors-only", action="store_true",
                        help="rerun only the mutants that survived the last run or that it did not reach "
                             "(after adding tests)")
    parser.add_argument("--scores", default="scores.json",
                        help="file under results/mutation/ for the scores (another than the default also gets its own "
                             "<name>_survivors.txt)")
    parser.add_argument("--tests", nargs="+", help="the tests for the one module given, instead of its mapping "
                                                   "(items as in MODULES: files, node ids, 'file::-k expr')")
    args = parser.parse_args(argv)
    if args.tests:
        if len(args.modules) != 1:
            raise SystemExit("--tests needs exactly one module")
        MODULES[args.modules[0]] = args.tests
    if args.worker:
        return worker(Path(args.worker), args.modules[0], args.limit, args.survivors_only)
    modules = args.modules or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        raise SystemExit(f"no test mapping for {unknown}; known: {sorted(MODULES)}")
    OUT.mkdir(parents=True, exist_ok=True)
    scores_path = OUT / args.scores
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {}
    equivalent = read_equivalent()
    for module in modules:
        start = time.time()
        previous = []
        if args.survivors_only:
            previous = json.loads((work_dir(module) / "results.json").read_text())
        work = scratch_copy(module)
        if previous:
            (work / "previous.json").write_text(json.dumps(previous))
        subprocess.run([sys.executable, __file__, "--worker", str(work), "--limit", str(args.limit), module]
                       + (["--survivors-only"] if previous else []) + (["--tests", *args.tests] if args.tests else []),
                       cwd=work, check=True, env={**os.environ, "PYTHONPATH": str(work),
                                                  "JAX_COMPILATION_CACHE_DIR": str(work / "jit_cache")})
        results = json.loads((work / "results.json").read_text())
        if previous:  # the mutants killed last time stay killed (tests were only added)
            rerun = {(r["operator"], r["occurrence"]) for r in results}
            results = [r for r in previous if (r["operator"], r["occurrence"]) not in rerun] + results
            (work / "results.json").write_text(json.dumps(results, indent=1))
        alive = [r for r in results if r["outcome"] == "survived"]
        eq = [r for r in alive if key_of(module, r["diff"]) in equivalent]
        killed = sum(r["outcome"] == "killed" for r in results)
        judged = killed + len(alive) - len(eq)
        scores[module] = {"mutants": len(results), "killed": killed, "survived": len(alive) - len(eq),
                          "equivalent": len(eq), "score": round(killed / judged, 3) if judged else None,
                          "wall_s": round(time.time() - start, 1), "tests": MODULES[module]}
        scores_path.write_text(json.dumps(scores, indent=1, sort_keys=True))
        survivors = "survivors.txt" if args.scores == "scores.json" else f"{Path(args.scores).stem}_survivors.txt"
        write_survivors(OUT / survivors, module, [r for r in alive if r not in eq])
        print(f"{module}: {scores[module]}", flush=True)


def work_dir(module):
    return OUT / "work" / module.replace("::", "_").replace(",", "_").replace("/", "_").replace(".py", "")


def scratch_copy(module):
    work = work_dir(module)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "fedjax_attacks", work / "fedjax_attacks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__", "mutation"))
    shutil.copytree(ROOT / "benchmarks", work / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))  # some tests
    shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
    return work


def worker(work: Path, module: str, limit: int, survivors_only: bool = False):
    """Runs in ``work`` (first on ``sys.path``): every mutant of ``module`` against its mapped tests."""
    import signal

    import pytest
    from cosmic_ray.commands.init import _all_work_items
    from cosmic_ray.mutating import _make_diff, use_mutation
    import cosmic_ray.plugins

    os.chdir(work)
    sys.path.insert(0, str(work))
    path = Path("fedjax_attacks") / module.partition("::")[0]
    inside = function_lines(path, module.partition("::")[2])
    items = [item for item in _all_work_items([path], {}) if keep_operator(item.mutations[0].operator_name)
             and inside(item.mutations[0].start_pos[0])]
    items = items[:limit] if limit else items
    if survivors_only:
        killed = {(r["operator"], r["occurrence"]) for r in json.loads((work / "previous.json").read_text())
                  if r["outcome"] == "killed"}  # the rest: survivors and mutants an interrupted run did not reach
        items = [item for item in items
                 if (item.mutations[0].operator_name, item.mutations[0].occurrence) not in killed]
    args = pytest_args(MODULES[module])

    def run_tests(timeout):
        for name in [n for n in sys.modules if n == "fedjax_attacks" or n.startswith(("fedjax_attacks.", "test_",
                                                                                        "tests", "conftest"))]:
            del sys.modules[name]

        def expire(*_):
            raise TimeoutError("mutant timed out")

        signal.signal(signal.SIGALRM, expire)
        signal.alarm(int(timeout))
        try:
            code = pytest.main(list(args))
        except TimeoutError:
            code = -1
        finally:
            signal.alarm(0)
        import jax
        jax.clear_caches()
        return code

    start = time.time()
    baseline = run_tests(1800)
    if baseline != 0:
        raise SystemExit(f"{module}: the mapped tests fail on the unmutated code (exit {baseline}): {args}")
    timeout = 3 * (time.time() - start) + 30
    assert Path(sys.modules["fedjax_attacks"].__file__).resolve().is_relative_to(work.resolve()), "not the copy"
    results = []
    for i, item in enumerate(items):
        spec = item.mutations[0]
        operator = cosmic_ray.plugins.get_operator(spec.operator_name)(**(spec.operator_args or {}))
        with use_mutation(spec.module_path, operator, spec.occurrence) as (original, mutated):
            if mutated is None:
                continue
            diff = "\n".join(_make_diff(original, mutated, spec.module_path))
            t0 = time.time()
            code = run_tests(timeout)
        outcome = "survived" if code == 0 else "killed" if code in (1, -1, 2, 3) else f"error{code}"
        results.append({"operator": spec.operator_name, "occurrence": spec.occurrence, "line": spec.start_pos[0],
                        "outcome": outcome, "exit": code, "seconds": round(time.time() - t0, 1), "diff": diff})
        print(f"[{i + 1}/{len(items)}] {module}:{spec.start_pos[0]} {spec.operator_name} -> {outcome}",
              file=sys.__stderr__, flush=True)
        (work / "results.json").write_text(json.dumps(results, indent=1))
    (work / "results.json").write_text(json.dumps(results, indent=1))


def function_lines(path, names):
    """A predicate on line numbers: inside one of the functions ``names`` ("loss,td_targets", any nesting) of the
    file ``path``; every line when ``names`` is empty (a module key ``"rl/ppo.py::loss"`` mutates only ``loss``)."""
    if not names:
        return lambda line: True
    import ast
    wanted = set(names.split(","))
    spans = [(node.lineno, node.end_lineno) for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in wanted]
    missing = wanted - {node.name for node in ast.walk(ast.parse(path.read_text()))
                        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if missing:
        raise SystemExit(f"{path}: no function named {sorted(missing)}")
    return lambda line: any(lo <= line <= hi for lo, hi in spans)


def key_of(module, diff):
    """A mutant's identity that survives renumbering: ``module | -old line => +new line``."""
    changed = [line[1:].strip() for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    return f"{module} | {' => '.join(changed)}"


def read_equivalent():
    """Keys from ``tests/mutation_equivalent.txt``: one per line, ``key  # reason`` (split at the last ``"  # "``: a
    key may hold a code comment); ``#`` lines are comments."""
    if not EQUIVALENT.exists():
        return set()
    return {line.rsplit("  # ", 1)[0].strip() for line in EQUIVALENT.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def write_survivors(path, module, alive):
    """Replaces ``module``'s entries in ``path`` (``results/mutation/survivors.txt`` for the default scores file,
    ``<scores>_survivors.txt`` for another)."""
    text = path.read_text() if path.exists() else ""
    blocks = [b for b in re.split(r"\n(?==== )", text) if b.strip() and not b.startswith(f"=== {module}:")]
    for r in alive:
        blocks.append(f"=== {module}:{r['line']} {r['operator']}\nkey: {key_of(module, r['diff'])}\n{r['diff']}\n")
    path.write_text("\n".join(sorted(b.rstrip() + "\n" for b in blocks)))


if __name__ == "__main__":
    main()
