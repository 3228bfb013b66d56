"""A password in an https source URL is taken out of it: git gets it through the environment only
(README "Security"; the end-to-end scan is integration/test_secret_canaries.py)."""

from __future__ import annotations

import secrets

from prefect_gitops.adapters.git import GitSource
from prefect_gitops.adapters.git_write import GitWriter
from prefect_gitops.adapters.url_credentials import credentials_for, hide_credentials, split_credentials


def test_user_and_password_are_taken_out_of_an_https_url():
    clean, credentials = split_credentials("https://deploy%40bot:p%2Fss@git.example.com:8443/g/repo.git")
    assert clean == "https://git.example.com:8443/g/repo.git"
    assert credentials is not None and (credentials.username, credentials.secret) == ("deploy@bot", "p/ss")
    assert "p/ss" not in repr(credentials)


def test_urls_without_a_password_are_left_alone():
    for url in ("https://git.example.com/g/repo.git", "https://alice@git.example.com/g/repo.git",
                "ssh://git@git.example.com/g/repo.git", "git@git.example.com:g/repo.git", "file:///srv/repo.git",
                "/srv/repo.git"):
        assert split_credentials(url) == (url, None)


def test_a_hidden_password_is_found_again_by_the_clean_url_in_this_process():
    password = secrets.token_hex(8)
    clean = hide_credentials(f"https://alice:{password}@hidden-{password}.example.com/repo.git")
    assert clean == f"https://hidden-{password}.example.com/repo.git"
    url, credentials = credentials_for(clean)
    assert url == clean and credentials is not None and credentials.secret == password
    assert credentials_for("https://other.example.com/repo.git") == ("https://other.example.com/repo.git", None)


def test_a_git_source_never_gives_git_the_password_in_its_arguments():
    password = secrets.token_hex(8)
    source = GitSource(f"https://alice:{password}@git.example.com/repo.git")
    assert source.url == source.display == "https://git.example.com/repo.git"
    assert source.runner.credentials is not None and source.runner.credentials.secret == password
    assert password not in repr(source.runner) and source.writer().url == source.url


def test_a_git_writer_made_with_a_password_in_its_url_pushes_with_it_through_the_environment():
    password = secrets.token_hex(8)
    writer = GitWriter(f"https://alice:{password}@git.example.com/repo.git")
    assert writer.url == "https://git.example.com/repo.git"
    assert writer.runner.credentials is not None and writer.runner.credentials.secret == password
