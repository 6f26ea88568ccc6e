"""URLs repro fetches (data inputs, locked .deb files): what it refuses to open."""

from __future__ import annotations

import pytest

from builder import download
from builder.errors import InputError


def test_a_url_of_a_scheme_repro_cannot_fetch_is_bad_input() -> None:
    """A repro.lock edited to name file:///etc/passwd as a .deb's URL: exit 2, not a crash."""
    with pytest.raises(InputError) as caught, download.open_url("file:///etc/passwd",
                                                               "system package tar"):
        pass
    assert "file:///etc/passwd is not an http(s), s3:// or gs:// URL" in str(caught.value)
