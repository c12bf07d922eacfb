import pytest

from luthitune.prompts import TemplateError, available, render, template_hash


def test_packaged_templates_present():
    assert {"invitation.md", "interview_system.md", "scenario.md", "questions.md"} <= set(available())


def test_missing_variable_fails_loudly():
    with pytest.raises(TemplateError, match="principles"):
        render("scenario.md", category="gray area")


def test_render_carries_template_hash():
    r = render("scenario.md", principles="P1 Care", category="dual-use")
    assert "P1 Care" in r.text and "dual-use" in r.text and "$" not in r.text
    assert r.template_hash == template_hash("scenario.md") and len(r.template_hash) == 64


def test_unknown_template():
    with pytest.raises(TemplateError, match=r"nope\.md"):
        render("nope.md")
