"""A fleet entry is a path or a URL, never an option of git: `update_fleet` puts `--` before it, so an
entry such as `--upload-pack=<command>` reaches git as the repository to clone, fails as one and is the
row's reason.

The task's own function is called (`.fn`), without a Prefect server: the whole flow runs in
test_generator_flows.py.
"""

from __future__ import annotations

from flows.update_fleet import update_project


def test_an_entry_that_looks_like_a_git_option_is_a_url_that_fails_with_its_reason(tmp_path):
    marker = tmp_path / "the-command-ran"
    entry = f"--upload-pack=touch {marker};x://host/repo"
    workspace = tmp_path / "workspace"
    workspace.mkdir()

    row = update_project.fn(entry, workspace, "template-update", None, [])

    assert row.status == "error" and row.project == entry, row
    # git read the entry as a URL of an unknown protocol ("--upload-pack=touch ...;x"), not as an option.
    assert (
        f"cannot clone {entry}: fatal: protocol '--upload-pack=touch {marker};x' is not supported"
        in row.tests
    )
    assert not marker.exists()
    assert list(workspace.iterdir()) == []
