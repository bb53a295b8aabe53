"""control/openapi.py: the document says what the request models take."""
from control.http import Route
from control.openapi import build_openapi
from control.sources import BroadcastRequest


async def _handler(request):  # never called
    raise AssertionError


def test_a_broadcast_needs_source_or_variants_not_source_whatever():
    doc = build_openapi("test", [Route("POST", "/broadcasts", _handler, "broadcasts.start",
                                       "start", body=BroadcastRequest)])
    schema = doc["components"]["schemas"]["BroadcastRequest"]
    assert "source" not in schema["required"] and "zones" in schema["required"]
    alternatives = schema["anyOf"]
    assert {"required": ["source"]} in alternatives
    assert any(a["required"] == ["variants"] and a["properties"]["variants"]["type"] == "array"
               for a in alternatives)
    # and the model takes what the document allows: variants alone, source alone
    variants = [{"language": "vi", "source": {"kind": "tts", "text": "Xin chào."}}]
    assert BroadcastRequest.model_validate({"zones": ["z"], "variants": variants}).source.kind \
        == "tts"
    assert BroadcastRequest.model_validate({"zones": ["z"], "source": {"kind": "chime"}})
