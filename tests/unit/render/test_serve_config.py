"""serveConfigV2's text is remembered by the application it renders: the same text PyYAML
writes, and a new one for any change."""

from __future__ import annotations

import yaml

from alpaca_operator.render.rayservice import serve_config


def _app(**args: object) -> dict[str, object]:
    return {
        "name": "alpaca",
        "import_path": "alpaca_serving.app:build",
        "args": {"model_path": "/models/x", "temperature": 0.7, "stop": ["###", "ü"], **args},
    }


def test_the_text_is_pyyamls_in_the_applications_key_order():
    app = _app(max_tokens=10**12, ratio=1e-05, flag=True, none=None)
    assert serve_config(app) == yaml.safe_dump({"applications": [app]}, sort_keys=False)
    assert serve_config(app).index("name:") < serve_config(app).index("import_path:")


def test_a_changed_application_gets_its_own_text():
    first, changed = _app(), _app(temperature=0.8)
    assert serve_config(first) != serve_config(changed)
    assert yaml.safe_load(serve_config(changed))["applications"][0]["args"]["temperature"] == 0.8
    assert serve_config(first) == serve_config(_app())
