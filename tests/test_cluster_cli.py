"""run_stream.py --cluster and python -m streamer.cluster: bad input is one line and exit 2, before any
model loads or any cluster starts (these need no ray)."""
import pytest

import run_stream
import streamer.cluster.__main__ as cluster_main
from streamer.cluster import client


def run(argv, capsys):
    code = run_stream.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_missing_ray_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(run_stream, "ray_available", lambda: False)
    code, err = run(["--avatar", "assets/astronaut.png", "--webrtc", "--cluster", "local"], capsys)
    assert code == 2
    assert err == ["error: --cluster needs ray[serve]: pip install -e .[cluster]"]


def test_import_ray_says_how_to_install(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(client.UserError, match=r"pip install -e \.\[cluster\]"):
        client.import_ray()


@pytest.mark.parametrize("argv, message", [
    (["--cluster", "10.0.0.5:6380"], "needs the cluster's token"),
    (["--cluster", "10.0.0.5:6380", "--cluster-token", "short"], "at least 16 characters"),
    (["--cluster", "local", "--replicas", "0"], "at least 1"),
    (["--cluster", "local", "--num-gpus", "1.5"], "a fraction of one GPU"),
    (["--cluster", "local", "--max-replicas", "2", "--min-replicas", "3"], "must lie in 0..--max-replicas"),
])
def test_bad_cluster_settings_are_one_line(argv, message, monkeypatch, capsys):
    monkeypatch.delenv("REENACT_CLUSTER_TOKEN", raising=False)
    monkeypatch.setattr(run_stream, "ray_available", lambda: pytest.fail("checked after the settings"))
    code, err = run(["--avatar", "assets/astronaut.png", "--webrtc", *argv], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_show_without_a_deployment_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cluster_main, "STATE", tmp_path / "cluster.json")
    with pytest.raises(SystemExit) as e:
        cluster_main.main(["show"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "python -m streamer.cluster start" in err[0]


def test_deployment_is_sized_by_the_flags():
    """--num-gpus (a fraction), --min/--max-replicas and --avatars-per-replica reach Serve's deployment."""
    pytest.importorskip("ray.serve")
    run_stream_args = run_stream.build_parser().parse_args(
        ["--avatar", "x.png", "--cluster", "local", "--num-gpus", "0.25", "--min-replicas", "1",
         "--max-replicas", "4", "--avatars-per-replica", "8", "--replica-device", "cuda"])
    from streamer.cluster.config import ClusterConfig
    from streamer.cluster.deployment import build_app
    from streamer.reenact.config import ReenactConfig
    cfg = ClusterConfig.from_args(run_stream_args)
    d = build_app(cfg, ReenactConfig(), "t" * 20)._bound_deployment
    assert d.ray_actor_options["num_gpus"] == 0.25
    scaling = d._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 4)
    spec = d.init_args[0]
    assert spec["avatars_per_replica"] == 8 and spec["device"] == "cuda" and spec["token"] == "t" * 20
    fixed = build_app(ClusterConfig(replicas=3), ReenactConfig(), "t" * 20)._bound_deployment
    assert fixed._deployment_config.num_replicas == 3 and fixed._deployment_config.autoscaling_config is None


def test_rays_token_file_is_made_the_owners_alone(tmp_path, monkeypatch):
    """Ray writes ~/.ray/auth_token with the umask (0644); the cluster commands make it 0600, whether
    they generate it or find it."""
    monkeypatch.setattr(cluster_main.Path, "home", staticmethod(lambda: tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    token = tmp_path / ".ray" / "auth_token"

    def ray_generates(*args, **kwargs):   # what `ray get-auth-token --generate` leaves behind
        token.parent.mkdir(parents=True, exist_ok=True)
        token.write_text("x" * 64)
        token.chmod(0o644)
        return cluster_main.subprocess.CompletedProcess(args, 0, "", "")

    monkeypatch.setattr(cluster_main.subprocess, "run", ray_generates)
    cluster_main.ensure_ray_token()
    assert token.stat().st_mode & 0o777 == 0o600
    token.chmod(0o644)                    # one Ray wrote earlier, e.g. for an in-process cluster
    cluster_main.ensure_ray_token()
    assert token.stat().st_mode & 0o777 == 0o600
    client.protect_ray_token()            # idempotent, and quiet without a file
    token.unlink()
    client.protect_ray_token()


@pytest.mark.parametrize("address, loopback", [
    ("127.0.0.1", True), ("127.0.0.1:6380", True), ("127.0.1.1:6380", True), ("localhost:6380", True),
    ("::1", True), ("[::1]:6380", True), ("ray://127.0.0.1:10001", True),
    ("10.0.0.5:6380", False), ("0.0.0.0:6380", False), ("ray://head.example:10001", False),
    ("auto", False), ("[::1:6380", False)])
def test_which_cluster_addresses_keep_ray_on_loopback(address, loopback, monkeypatch):
    monkeypatch.delenv(client.LOOPBACK_SWITCH, raising=False)
    assert client.is_loopback(address) is loopback
    client.keep_ray_on_loopback(address)
    assert (client.os.environ.get(client.LOOPBACK_SWITCH) == "0") is loopback
