"""research.yaml validation: defaults, the repository's own file, and one clear line per problem."""
from pathlib import Path

import pytest

from mcp_server.research.config import (ChoiceParam, FloatParam, IntParam, ResearchConfigError, load_research,
                                        parse_research)

REPO = Path(__file__).resolve().parent.parent


def refused(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "research.yaml"
    path.write_text(text)
    with pytest.raises(ResearchConfigError) as info:
        load_research(path)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_missing_file_gives_defaults(tmp_path):
    cfg = load_research(tmp_path / "research.yaml")
    assert cfg.metric.name == "val_bpb" and cfg.metric.direction == "minimize" and cfg.metric.lower_is_better
    assert cfg.search_space == {} and cfg.constraints == []
    assert cfg.budgets.gpu_hours is None and cfg.budgets.money is None
    assert cfg.checkpoint.every_experiments is None and cfg.checkpoint.every_hours is None
    assert cfg.max_gpus is None and cfg.command_policy.mode == "any"
    assert cfg.noise.seeds == 3 and cfg.noise.alpha == 0.05


def test_empty_file_gives_defaults(tmp_path):
    (tmp_path / "research.yaml").write_text("# nothing yet\n")
    assert load_research(tmp_path / "research.yaml") == load_research(tmp_path / "absent.yaml")


def test_repository_research_yaml_is_valid():
    cfg = load_research(REPO / "mcp_server" / "templates" / "research.yaml")
    assert isinstance(cfg.search_space["matrix_lr"], FloatParam) and cfg.search_space["matrix_lr"].log
    assert isinstance(cfg.search_space["depth"], IntParam)
    assert isinstance(cfg.search_space["window_pattern"], ChoiceParam)
    assert cfg.command_policy.mode == "trainer_only"
    assert 2 <= cfg.max_gpus <= 4


def test_full_example_parses(tmp_path):
    path = tmp_path / "research.yaml"
    path.write_text("""
metric: {name: val_loss, direction: maximize}
search_space:
  matrix_lr: {type: float, min: 0.005, max: 0.1, log: true}
  depth: {type: int, min: 4, max: 12}
  window_pattern: {type: choice, values: [SSSL, SL, L]}
undeclared_params: refuse
baseline: {device_batch_size: 32, seq_len: 2048}
constraints:
  - {param: depth, max: 12}
  - {product: [device_batch_size, seq_len], max: 65536, name: tokens per device batch}
time_budget_s: 300
hard_limit_s: 1200
budgets: {gpu_hours: 16, money: 400, price_per_gpu_hour: {H100: 2.5}}
checkpoint: {every_experiments: 20, every_hours: 4}
max_gpus: 2
command_policy: {mode: allowlist, allow: [[python, run.py], 'python -m mypkg\\.train .*']}
noise: {seeds: 4, alpha: 0.01}
hangs: {silent_after_s: 600, kill: true}
stagnation: {window: 12}
""")
    cfg = load_research(path)
    assert cfg.metric.direction == "maximize" and not cfg.metric.lower_is_better
    assert cfg.constraints[1].label == "tokens per device batch" and cfg.constraints[1].keys == [
        "device_batch_size", "seq_len"]
    assert cfg.command_policy.allow == [["python", "run.py"], "python -m mypkg\\.train .*"]
    assert cfg.budgets.price_per_gpu_hour == {"H100": 2.5} and cfg.hangs.kill and cfg.stagnation.window == 12


def test_unknown_fields_are_errors_with_line_and_suggestion(tmp_path):
    problems = refused(tmp_path, "metric: {name: val_bpb}\nmax_gpu: 4\nsearch_space:\n"
                                 "  lr: {type: float, min: 0.1, max: 1, lg: true}\n")
    assert problems == [
        f"{tmp_path}/research.yaml:2: field 'max_gpu': unknown field; fix: remove it (did you mean 'max_gpus'?)",
        f"{tmp_path}/research.yaml:4: field 'search_space.lr.lg': unknown field; fix: remove it "
        "(did you mean 'log'?)",
    ]


def test_type_errors_name_field_value_and_fix(tmp_path):
    problems = refused(tmp_path, """
metric: {direction: lower}
search_space:
  depth: {type: int, min: 4.5, max: 12}
  pattern: {type: str}
budgets: {gpu_hours: -1}
noise: {seeds: 1}
""")
    text = "\n".join(problems)
    assert ":2: field 'metric.direction': input should be 'minimize' or 'maximize' (got 'lower'); fix: " \
           "direction: minimize (or maximize)" in text
    assert ":4: field 'search_space.depth.min': " in text and "(got 4.5); fix: a whole number" in text
    assert ":5: field 'search_space.pattern.type': type must be one of float, int, choice (got 'str')" in text
    assert ":6: field 'budgets.gpu_hours': input should be greater than 0 (got -1); fix: gpu_hours: 16" in text
    assert ":7: field 'noise.seeds': input should be greater than or equal to 2 (got 1); fix: seeds: 3" in text
    assert len(problems) == 5


def test_meaning_errors(tmp_path):
    problems = refused(tmp_path, """
search_space:
  lr: {type: float, min: 0.1, max: 0.01}
  wd: {type: float, min: 0, max: 0.5, log: true}
  wp: {type: choice, values: [L, L]}
constraints:
  - {param: depth, product: [a, b], max: 3}
  - {param: depth}
  - {product: [micro_steps, seq_len], max: 65536}
  - {param: depth, min: 5, max: 3}
time_budget_s: 300
hard_limit_s: 100
command_policy: {mode: any, allow: ['(']}
""")
    text = "\n".join(problems)
    assert ":3: field 'search_space.lr.max': max 0.01 is not above min 0.1" in text
    assert ":4: field 'search_space.wd.min': a log-scale range needs min > 0 (got 0.0)" in text
    assert ":5: field 'search_space.wp.values': values are not distinct" in text
    assert ":7: field 'constraints[0]': a rule names exactly one of param or product" in text
    assert ":8: field 'constraints[1]': a rule needs min, max or both" in text
    # seq_len has the trainer's own default as its baseline; micro_steps is no trainer setting and has none.
    assert ":9: field 'constraints[2].product': key 'micro_steps' has no numeric baseline value" in text
    assert "key 'seq_len'" not in text
    assert ":10: field 'constraints[3].max': max 3.0 is below min 5.0" in text
    assert ":12: field 'hard_limit_s': hard_limit_s 100 is below time_budget_s 300" in text
    assert "field 'command_policy.allow': allow entries only apply with mode: allowlist" in text
    assert "field 'command_policy.allow[0]': not a valid regular expression" in text
    assert all("; fix: " in p for p in problems)


def test_allowlist_needs_entries(tmp_path):
    problems = refused(tmp_path, "command_policy: {mode: allowlist}\n")
    assert problems == [f"{tmp_path}/research.yaml:1: field 'command_policy.allow': mode allowlist needs at least "
                        "one allow entry; fix: allow: [[python, run.py], 'python -m mypkg\\.train .*']"]


def test_duplicate_keys_and_syntax_errors(tmp_path):
    problems = refused(tmp_path, "max_gpus: 2\nmax_gpus: 4\n")
    assert problems == [f"{tmp_path}/research.yaml:2: field 'max_gpus': given twice (YAML keeps only the last); "
                        "fix: keep one 'max_gpus:'"]
    problems = refused(tmp_path, "search_space: {lr: [\n")
    assert len(problems) == 1 and "YAML syntax error" in problems[0] and problems[0].startswith(
        f"{tmp_path}/research.yaml:")
    problems = refused(tmp_path, "- a list\n")
    assert "the file must be a mapping of settings" in problems[0]


def test_parse_research_accepts_plain_data():
    cfg = parse_research({"search_space": {"lr": {"type": "float", "min": "1e-4", "max": 0.1, "log": True}}})
    assert cfg.search_space["lr"].min == pytest.approx(1e-4)   # YAML 1.1 reads 1e-4 as text: accepted as a number
    with pytest.raises(ResearchConfigError, match="field 'search_space.lr.type'"):
        parse_research({"search_space": {"lr": {"min": 1}}})
