"""gradwatch.Client and the environment defaults, without a daemon: the
URL and token taken from arguments or GRADWATCH_SERVER / GRADWATCH_TOKEN
(explicit wins), argument checks made before any request, the exception
hierarchy, and the Publisher's GRADWATCH_ENDPOINT / GRADWATCH_RUN. The
Client's answers against a real daemon are tested in
tests/integration/test_notebook_client.py."""
import pytest

import gradwatch
from gradwatch import client as gc


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for v in ("GRADWATCH_SERVER", "GRADWATCH_TOKEN", "GRADWATCH_ENDPOINT", "GRADWATCH_RUN"):
        monkeypatch.delenv(v, raising=False)


def test_url_and_token_defaults(monkeypatch):
    c = gradwatch.Client()
    assert c.url == "http://127.0.0.1:8080" and c._token is None
    assert gradwatch.Client("https://gw.example:8443/base/").url == "https://gw.example:8443/base"
    monkeypatch.setenv("GRADWATCH_SERVER", "http://10.0.0.5:9000")
    monkeypatch.setenv("GRADWATCH_TOKEN", "  tok-from-env \n")
    c = gradwatch.Client()
    assert c.url == "http://10.0.0.5:9000" and c._token == "tok-from-env"
    assert "tok-from-env" not in repr(c)
    c = gradwatch.Client("http://127.0.0.1:1", token="explicit")
    assert c.url == "http://127.0.0.1:1" and c._token == "explicit"
    assert gradwatch.Client(token="")._token is None  # "" turns the token off
    monkeypatch.setenv("GRADWATCH_SERVER", "127.0.0.1:8080")
    with pytest.raises(ValueError, match="GRADWATCH_SERVER"):
        gradwatch.Client()
    with pytest.raises(ValueError, match="url"):
        gradwatch.Client("127.0.0.1:8080")
    with pytest.raises(TypeError, match="url"):
        gradwatch.Client(8080)
    with pytest.raises(TypeError, match="token"):
        gradwatch.Client("http://x", token=5)
    with pytest.raises(ValueError, match="timeout"):
        gradwatch.Client("http://x", timeout=0)


def test_arguments_checked_before_any_request():
    c = gradwatch.Client("http://127.0.0.1:9")  # nothing is sent for these
    with pytest.raises(ValueError, match="run"):
        c.series("a b", "all")
    with pytest.raises(ValueError, match="tag"):
        c.series("r", "a b")
    with pytest.raises(ValueError, match="metrics"):
        c.series("r", "all", [])
    with pytest.raises(ValueError, match="metrics"):
        c.series("r", "all", ["kappa_ema", ""])
    with pytest.raises(TypeError, match="to_step"):
        c.series("r", "all", to_step=1.5)
    with pytest.raises(ValueError, match="from_step"):
        c.series("r", "all", from_step=2 ** 63)
    with pytest.raises(TypeError, match="max_points"):
        c.series("r", "all", max_points="10")
    with pytest.raises(ValueError, match="run"):
        c.run("x/y")
    with pytest.raises(ValueError, match="runs"):
        c.summary([])
    with pytest.raises(ValueError, match="run"):
        c.summary(["ok", "not ok"])


def test_exception_hierarchy():
    assert issubclass(gradwatch.UnknownRun, gradwatch.NotFound)
    assert issubclass(gradwatch.UnknownStream, gradwatch.NotFound)
    assert issubclass(gradwatch.NotFound, LookupError)
    assert issubclass(gradwatch.BadRequest, ValueError)
    assert issubclass(gradwatch.DaemonUnavailable, ConnectionError)
    assert issubclass(gradwatch.Unauthorized, PermissionError)
    for e in (gradwatch.UnknownRun, gradwatch.UnknownStream, gradwatch.BadRequest,
              gradwatch.DaemonUnavailable, gradwatch.Unauthorized, gradwatch.ServerError):
        assert issubclass(e, gradwatch.GradwatchError)


def test_publisher_environment(monkeypatch, port):
    with pytest.raises(ValueError, match="GRADWATCH_RUN"):
        gradwatch.Publisher(k=8)  # no run anywhere
    monkeypatch.setenv("GRADWATCH_RUN", "job-77")
    with gradwatch.Publisher(k=8) as p:
        assert p.run == "job-77" and p.endpoint == "tcp://127.0.0.1:5557"
    monkeypatch.setenv("GRADWATCH_ENDPOINT", f"tcp://127.0.0.1:{port}")
    with gradwatch.Publisher(k=8) as p:
        assert p.endpoint == f"tcp://127.0.0.1:{port}"
    with gradwatch.Publisher("tcp://127.0.0.1:1", "explicit", k=8) as p:  # positional wins
        assert p.endpoint == "tcp://127.0.0.1:1" and p.run == "explicit"
    monkeypatch.setenv("GRADWATCH_RUN", "job 77")  # outside the grammar
    with pytest.raises(ValueError, match="GRADWATCH_RUN"):
        gradwatch.Publisher(k=8)
    with gradwatch.Publisher(run="ok", k=8) as p:  # an explicit run is not checked against it
        assert p.run == "ok"
    monkeypatch.setenv("GRADWATCH_ENDPOINT", "127.0.0.1:5557")
    with pytest.raises(ValueError, match="GRADWATCH_ENDPOINT"):
        gradwatch.Publisher(run="ok", k=8)


def test_dict_form_without_pandas(monkeypatch):
    monkeypatch.setattr(gc, "_have_pandas", lambda: False)
    body = b'{"run":"r","tag":"all","step":[1,2,3],"kappa_ema":[0.5,null,1e300]}'
    monkeypatch.setattr(gc.Client, "_get", lambda self, path, params=None, not_found=None,
                        raw=False: body)
    d = gradwatch.Client().series("r", "all", "kappa_ema")
    assert isinstance(d, dict) and list(d) == ["step", "kappa_ema"]
    assert d["step"].tolist() == [1, 2, 3] and d["step"].dtype.kind == "i"
    assert d["kappa_ema"][0] == 0.5 and d["kappa_ema"][2] == 1e300
    assert d["kappa_ema"][1] != d["kappa_ema"][1]  # NaN



def test_fast_column_parser_equals_json():
    """The numpy text parser of series() against json.loads on awkward
    numbers (nulls, exponents, subnormals, negatives, 17 digits, empty
    columns), and its fallback on text of another shape."""
    import json
    import numpy as np
    docs = [
        {"run": "r", "tag": "a/b:c", "step": [0, 1, 2 ** 62, 2 ** 63 - 1],
         "kappa_ema": [None, -1.5e-300, 5e-324, 0.1 + 0.2], "rank_90": [1, None, None, 3.0]},
        {"run": "r", "tag": "t", "step": [], "loss": []},
        {"run": "r", "tag": "t", "step": [7], "loss": [None]},
        {"run": "r", "tag": "t", "step": [1, 2], "lr": [1e308, -0.0]},
    ]
    for doc in docs:
        body = json.dumps(doc, separators=(",", ":")).encode()
        fast = gc._columns_fast(body)
        ref = gc._columns_json(body, "u")
        assert fast is not None and list(fast) == list(ref) == [k for k in doc if k not in ("run", "tag")]
        assert fast["step"].dtype == np.int64 and fast["step"].tolist() == doc["step"]
        for k in ref:
            assert fast[k].dtype == ref[k].dtype
            assert np.array_equal(fast[k], ref[k], equal_nan=True), k
            assert all(np.signbit(fast[k]) == np.signbit(ref[k]))
    for odd in [b'{"run":"r","tag":"t","step":[1,2],"x":[1,oops]}',  # unreadable number
                b'{"run":"r","tag":"t","step":[1,2],"x":[1,,2]}',    # count mismatch
                b'{"run":"r","tag":"t","step":[1,2],"x":[1,2]',      # unterminated
                b'{"tag":"t","run":"r","step":[1]}',                 # another key order
                b'{"run":"r","tag":"t","x":[1]}']:                   # no step column
        assert gc._columns_fast(odd) is None, odd
