def test_apiserver_version(control_plane):
    out = control_plane.kubectl_run("version", "-o", "json").stdout
    assert '"gitVersion": "v1.37.2"' in out
