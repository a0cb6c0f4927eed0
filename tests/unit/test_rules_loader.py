"""sensor.rules.loader: a directory of rule files and its rules.toml, reloaded
by stat polling; a reload that fails (syntax error, exception at import,
duplicate rule id, bad TOML) keeps the last good version and says which file
and line; deleted files' rules go; a missing directory is one clear error."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sensor.errors import SensorError
from sensor.rules import hooks
from sensor.rules.loader import LoadError, RuleSet
from support.rules_helpers import RecordingLogger, write

REPO = Path(__file__).resolve().parents[2]

RULE = '''
from sensor.rules import alert, config, hooks, rule

@rule(hooks.command, id="{id}", rev={rev})
def {fn}(flow, command):
    alert(description="{id} rev {rev}", severity="low")
'''


def rule_text(id="a.cmd", rev=1, fn="cmd"):
    return RULE.format(id=id, rev=rev, fn=fn)


@pytest.fixture
def rules(tmp_path):
    d = tmp_path / "rules"
    d.mkdir()
    return d


def ids(ruleset):
    return [(r.id, r.rev) for r in ruleset.rules]


# ---------------------------------------------------------------- loading

def test_a_missing_rules_directory_is_a_one_line_sensor_error(tmp_path):
    with pytest.raises(SensorError) as missing:
        RuleSet(tmp_path / "nowhere")
    assert isinstance(missing.value, LoadError)
    assert "\n" not in str(missing.value)
    assert str(tmp_path / "nowhere") in str(missing.value) and "does not exist" in str(missing.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(LoadError, match="is not a directory"):
        RuleSet(tmp_path / "file")


def test_every_python_file_is_loaded_except_private_and_hidden_ones(rules):
    write(rules / "a.py", rule_text("a.cmd"))
    write(rules / "b.py", '''
    from sensor.rules import hooks, rule

    @rule(hooks.response)
    def on_reply(flow, reply):
        pass

    @rule(hooks.mail_content, streamed=True)
    async def on_content(flow, content):
        async for chunk in content:
            pass
    ''')
    write(rules / "_helper.py", rule_text("helper.cmd"))
    write(rules / ".hidden.py", rule_text("hidden.cmd"))
    write(rules / "notes.txt", "not a rule")
    rs = RuleSet(rules)
    assert rs.errors == {}
    # default id: <file stem>.<function name>
    assert ids(rs) == [("a.cmd", 1), ("b.on_reply", 1), ("b.on_content", 1)]
    assert [r.id for r in rs.for_hook(hooks.command)] == ["a.cmd"]
    assert [r.id for r in rs.for_hook("mail_content")] == ["b.on_content"]
    (on_reply,) = rs.for_hook(hooks.response)
    assert on_reply.file == str(rules / "b.py") and on_reply.line == 4     # its @rule line


def test_the_shipped_rules_load_cleanly():
    rs = RuleSet(REPO / "rules")
    assert rs.errors == {}
    assert {r.id for r in rs.rules} == {"attachments.executable", "auth_bruteforce.client",
                                        "auth_bruteforce.connection", "dump_mail.content", "rcpt_rejects.harvest",
                                        "smuggling.terminator", "spam_filter.mail_from"}
    assert rs.config["spam_filter"]["banned_domains"]


def test_a_rule_file_may_use_dataclasses_with_postponed_annotations(rules):
    # dataclasses look the class's module up in sys.modules while the file is
    # being imported: the loader must have put it there
    write(rules / "dc.py", '''
    from __future__ import annotations
    from dataclasses import dataclass, field
    from sensor.rules import hooks, rule

    @dataclass
    class Seen:
        count: int = 0
        names: list[str] = field(default_factory=list)

    @rule(hooks.connection)
    def conn(flow):
        flow.scratch["seen"] = Seen()
    ''')
    rs = RuleSet(rules)
    assert rs.errors == {} and ids(rs) == [("dc.conn", 1)]


def test_two_rule_sets_with_files_of_the_same_name_do_not_share_modules_or_settings(tmp_path):
    text = '''
    from sensor.rules import config, hooks, rule

    @rule(hooks.connection, id="{which}.conn")
    def conn(flow):
        pass

    def setting():
        return config().get("value")
    '''
    sets = []
    for which in ("one", "two"):
        d = tmp_path / which
        d.mkdir()
        write(d / "same.py", text.format(which=which))
        write(d / "rules.toml", f'[same]\nvalue = "{which}"\n')
        sets.append(RuleSet(d))
    one, two = sets
    mod_one, mod_two = one.files[tmp_path / "one" / "same.py"].module, two.files[tmp_path / "two" / "same.py"].module
    assert mod_one is not mod_two and mod_one.__name__ != mod_two.__name__
    assert sys.modules[mod_one.__name__] is mod_one and sys.modules[mod_two.__name__] is mod_two
    # each file reads its own directory's rules.toml
    assert (mod_one.setting(), mod_two.setting()) == ("one", "two")
    # forgetting one file does not unload the other set's
    (tmp_path / "one" / "same.py").unlink()
    one.poll()
    assert mod_one.__name__ not in sys.modules and sys.modules[mod_two.__name__] is mod_two


# ---------------------------------------------------------------- hot reload

def test_a_changed_file_is_reloaded_and_an_unchanged_one_is_not(rules):
    path = write(rules / "a.py", rule_text(rev=1))
    write(rules / "b.py", rule_text("b.cmd"))
    rs = RuleSet(rules)
    b_module = rs.files[rules / "b.py"].module
    generation = rs.generation
    assert rs.poll() is False and rs.generation == generation
    write(path, rule_text(rev=2))
    assert rs.poll() is True
    assert ids(rs) == [("a.cmd", 2), ("b.cmd", 1)] and rs.generation == generation + 1
    assert rs.files[rules / "b.py"].module is b_module
    assert rs.poll() is False


def test_a_forced_reload_imports_every_file_again(rules):
    write(rules / "a.py", rule_text())
    rs = RuleSet(rules)
    module = rs.files[rules / "a.py"].module
    assert rs.reload(force=True)                   # what SIGHUP does
    assert rs.files[rules / "a.py"].module is not module


def test_a_new_file_is_loaded_by_the_next_poll(rules):
    write(rules / "a.py", rule_text())
    rs = RuleSet(rules)
    write(rules / "c.py", rule_text("c.cmd"))
    assert rs.poll() and ids(rs) == [("a.cmd", 1), ("c.cmd", 1)]


def test_a_syntax_error_keeps_the_last_good_version_and_names_file_and_line(rules):
    path = write(rules / "a.py", rule_text(rev=1))
    logger = RecordingLogger()
    rs = RuleSet(rules, logger)
    write(path, rule_text(rev=2) + "\ndef broken(:\n")
    assert rs.poll() is False
    assert ids(rs) == [("a.cmd", 1)]
    error = rs.errors[path]
    line = rule_text().count("\n") + 2
    assert error.startswith(f"{path}:{line}: SyntaxError") and "keeping the previous version" in error
    assert "\n" not in error
    assert rs.counters.reload_errors == 1
    ((message, kw),) = logger.of("error")
    assert kw["error"] == error
    # the broken version is not tried again until it changes
    assert rs.poll() is False and rs.counters.reload_errors == 1
    write(path, rule_text(rev=3))
    assert rs.poll() and ids(rs) == [("a.cmd", 3)] and rs.errors == {}


def test_an_exception_at_import_keeps_the_last_good_version_and_names_file_and_line(rules):
    path = write(rules / "a.py", rule_text(rev=1))
    rs = RuleSet(rules)
    write(path, "import os\n\nLIMIT = int(os.environ.get('NOPE', 'many'))\n" + rule_text(rev=2))
    assert rs.poll() is False
    assert ids(rs) == [("a.cmd", 1)]
    assert rs.errors[path].startswith(f"{path}:3: ValueError: invalid literal for int()")
    assert rs.errors[path].endswith("keeping the previous version")


def test_a_file_that_never_loaded_says_so(rules):
    path = write(rules / "bad.py", "raise SystemExit('a rule file must not exit')\n")
    rs = RuleSet(rules)
    assert rs.rules == []
    assert rs.errors[path] == f"{path}:1: SystemExit: a rule file must not exit ; not loaded"


def test_a_rule_declared_wrongly_is_a_load_error_at_its_line(rules):
    path = write(rules / "a.py", '''
    from sensor.rules import hooks, rule

    @rule(hooks.command, streamed=True)
    def cmd(flow, command):
        pass
    ''')
    rs = RuleSet(rules)
    assert rs.rules == []
    assert rs.errors[path].startswith(f"{path}:4: RuleError: only hooks.mail_content and hooks.attachment can be streamed")


def test_a_duplicate_rule_id_across_files_is_refused_and_the_first_kept(rules):
    write(rules / "a.py", rule_text("shared.id"))
    b = write(rules / "b.py", rule_text("shared.id", fn="other"))
    rs = RuleSet(rules)
    assert ids(rs) == [("shared.id", 1)] and rs.files[rules / "a.py"].rules[0].fn.__name__ == "cmd"
    assert rules / "b.py" not in rs.files
    assert rs.errors[b] == f"{b}: rule id 'shared.id' is already used by {rules / 'a.py'} ; not loaded"


def test_a_duplicate_rule_id_in_one_file_is_refused(rules):
    path = write(rules / "a.py", rule_text("twice.id") + rule_text("twice.id", fn="again"))
    rs = RuleSet(rules)
    assert rs.rules == [] and "rule id 'twice.id' is already used" in rs.errors[path]


def test_a_file_refused_for_a_duplicate_id_loads_once_the_other_file_lets_go_of_it(rules):
    a = write(rules / "a.py", rule_text("moving.id"))
    write(rules / "b.py", rule_text("moving.id", fn="moved"))
    rs = RuleSet(rules)
    assert rules / "b.py" in rs.errors
    # the rule moved from a.py to b.py, b.py saved first: a.py now lets go of it
    write(a, rule_text("a.other"))
    assert rs.poll()
    assert sorted(ids(rs)) == [("a.other", 1), ("moving.id", 1)] and rs.errors == {}


def test_a_deleted_file_s_rules_are_removed(rules):
    write(rules / "a.py", rule_text())
    b = write(rules / "b.py", rule_text("b.cmd"))
    rs = RuleSet(rules)
    module_name = rs.files[b].module.__name__
    b.unlink()
    assert rs.poll() and ids(rs) == [("a.cmd", 1)]
    assert rs.for_hook(hooks.command)[0].id == "a.cmd" and len(rs.for_hook(hooks.command)) == 1
    assert module_name not in sys.modules


def test_a_deleted_broken_file_takes_its_error_with_it(rules):
    write(rules / "a.py", rule_text())
    bad = write(rules / "bad.py", "def (\n")
    rs = RuleSet(rules)
    assert bad in rs.errors
    bad.unlink()
    rs.poll()
    assert rs.errors == {}


def test_a_vanished_rules_directory_keeps_the_rules_and_says_why(rules, tmp_path):
    write(rules / "a.py", rule_text())
    logger = RecordingLogger()
    rs = RuleSet(rules, logger)
    moved = tmp_path / "moved"
    rules.rename(moved)                # e.g. an unmounted shared folder, a deploy swapping it
    assert rs.poll() is False
    assert ids(rs) == [("a.cmd", 1)]
    assert "does not exist" in rs.errors[rules]
    moved.rename(rules)
    rs.poll()
    assert ids(rs) == [("a.cmd", 1)] and rs.errors == {}


# ---------------------------------------------------------------- rules.toml

CONFIG_RULE = '''
from sensor.rules import config, hooks, rule

@rule(hooks.connection)
def conn(flow):
    pass

def settings():
    return config()

def other():
    return config("other")
'''


def test_rules_toml_gives_each_file_its_section_and_a_change_needs_no_rule_file_change(rules):
    write(rules / "cfg.py", CONFIG_RULE)
    toml = write(rules / "rules.toml", '[cfg]\nlimit = 5\n[other]\nname = "x"\n')
    rs = RuleSet(rules)
    module = rs.files[rules / "cfg.py"].module
    assert module.settings() == {"limit": 5} and module.other() == {"name": "x"}
    generation = rs.generation
    write(toml, '[cfg]\nlimit = 7\n')
    assert rs.poll() and rs.generation == generation + 1
    assert rs.files[rules / "cfg.py"].module is module          # not imported again
    assert module.settings() == {"limit": 7} and module.other() == {}


def test_a_bad_rules_toml_keeps_the_previous_settings_and_names_the_line(rules):
    write(rules / "cfg.py", CONFIG_RULE)
    toml = write(rules / "rules.toml", '[cfg]\nlimit = 5\n')
    logger = RecordingLogger()
    rs = RuleSet(rules, logger)
    module = rs.files[rules / "cfg.py"].module
    write(toml, '[cfg]\nlimit = 6\nlimit = = 7\n')
    assert rs.poll() is False
    assert module.settings() == {"limit": 5}
    assert str(toml) in rs.errors[toml] and "line 3" in rs.errors[toml]
    assert "keeping the previous settings" in rs.errors[toml] and rs.counters.reload_errors == 1
    assert [m for m, _ in logger.of("error")] == ["rules config not loaded"]
    write(toml, '[cfg]\nlimit = 8\n')
    assert rs.poll() and module.settings() == {"limit": 8} and rs.errors == {}


def test_a_removed_rules_toml_leaves_every_rule_with_its_defaults(rules):
    write(rules / "cfg.py", CONFIG_RULE)
    toml = write(rules / "rules.toml", '[cfg]\nlimit = 5\n')
    rs = RuleSet(rules)
    toml.unlink()
    assert rs.poll() and rs.files[rules / "cfg.py"].module.settings() == {}
