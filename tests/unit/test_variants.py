"""control/variants.py: which voice and which language variants each zone airs, and how zones
are grouped into engine broadcasts."""
import pytest

from control.errors import Invalid
from control.sources import BroadcastRequest
from control.variants import media_ids, plan, texts, zone_defaults
from streamer.zones import Zone, ZoneTree

def tree_of(*zones):
    t = ZoneTree()
    for z in zones:
        t.add(z)
    return t


# tỉnh → xã A (vi) → thôn 1 (vi, bahnar), thôn 2 (inherits); xã B (hre, vi) with its own voice
TREE = tree_of(Zone("tinh", language="vi"),
                 Zone("xa-a", parent="tinh"),
                 Zone("thon-1", parent="xa-a"), Zone("thon-2", parent="xa-a"),
                 Zone("xa-b", parent="tinh", language="hre"),
                 Zone("lang-b", parent="xa-b"))
SPEECH = {"tinh": ("vi-vn-x-central", []), "thon-1": (None, ["vi", "bahnar"]),
          "xa-b": ("vi-vn-x-south", ["hre", "vi"])}
TTS = {"kind": "tts", "text": "Thông báo."}
BAHNAR = {"kind": "media", "id": "ba01"}
HRE = {"kind": "media", "id": "4e02"}


def req(**kw):
    return BroadcastRequest.model_validate({"zones": ["tinh"], **kw})


def test_defaults_are_inherited_up_the_tree():
    assert zone_defaults(TREE, "thon-2", SPEECH) == ("vi-vn-x-central", ("vi",))
    assert zone_defaults(TREE, "thon-1", SPEECH) == ("vi-vn-x-central", ("vi", "bahnar"))
    assert zone_defaults(TREE, "lang-b", SPEECH) == ("vi-vn-x-south", ("hre", "vi"))
    # no languages anywhere up the tree: the zone's own language
    assert zone_defaults(TREE, "xa-b", {}) == (None, ("hre",))


def test_a_text_without_a_voice_is_read_in_each_zones_voice():
    groups = plan(req(source=TTS), TREE.resolve(["tinh"]), TREE, SPEECH)
    got = {g.parts[0][1].voice: (set(g.zones), g.targets) for g in groups}
    # the province zone has no loudspeakers of its own: Xã A is addressed instead of it, so
    # Xã B (southern voice) does not hear the central reading too
    assert got == {"vi-vn-x-central": ({"xa-a", "thon-1", "thon-2"}, ("xa-a",)),
                   "vi-vn-x-south": ({"xa-b", "lang-b"}, ("xa-b",))}


def test_a_named_voice_or_engine_wins_and_one_group_keeps_the_request_targets():
    for src in (dict(TTS, voice="vi"), dict(TTS, engine="espeak")):
        (g,) = plan(BroadcastRequest.model_validate({"zones": ["xa-a", "xa-b"], "source": src}),
                    TREE.resolve(["xa-a", "xa-b"]), TREE, SPEECH)
        assert g.targets == ("xa-a", "xa-b") and g.parts[0][1].voice == src.get("voice")
    # no zone voice anywhere: one group, the server's default (None here)
    (g,) = plan(req(source=TTS), TREE.resolve(["tinh"]), TREE, {})
    assert g.targets == ("tinh",) and g.parts[0][1].voice is None


def test_variants_in_each_zones_order():
    r = req(zones=["xa-a", "xa-b"],
            variants=[{"language": "vi", "source": TTS}, {"language": "bahnar", "source": BAHNAR},
                      {"language": "hre", "source": HRE}])
    assert r.source.kind == "tts"   # the first variant stands for the source
    groups = plan(r, TREE.resolve(["xa-a", "xa-b"]), TREE, SPEECH)
    got = {tuple(g.languages): (set(g.zones), g.targets) for g in groups}
    assert got == {("vi",): ({"thon-2"}, ("thon-2",)),
                   ("vi", "bahnar"): ({"thon-1"}, ("thon-1",)),
                   ("hre", "vi"): ({"xa-b", "lang-b"}, ("xa-b",))}
    # the text read in Xã B is in its southern voice, in Xã A's villages in the central one
    hre_group = next(g for g in groups if g.languages == ["hre", "vi"])
    assert [type(p).__name__ for _, p in hre_group.parts] == ["MediaSpec", "TtsSpec"]
    assert hre_group.parts[1][1].voice == "vi-vn-x-south"
    assert sorted(media_ids(groups)) == ["4e02", "ba01"]
    assert {t.voice for t in texts(groups)} == {"vi-vn-x-central", "vi-vn-x-south"}


def test_a_zone_with_none_of_the_languages_airs_the_first_variant():
    r = req(zones=["xa-b"], variants=[{"language": "bahnar", "source": BAHNAR},
                                      {"language": "cham", "source": HRE}])
    (g,) = plan(r, TREE.resolve(["xa-b"]), TREE, SPEECH)
    assert g.languages == ["bahnar"] and g.targets == ("xa-b",)


def test_a_split_that_cannot_be_addressed_is_refused():
    # Xã A has loudspeakers of its own and reads Vietnamese only; Thôn 1 below it adds Bahnar
    tree = tree_of(Zone("xa-a", unicast=[("127.0.0.1", 9)]), Zone("thon-1", parent="xa-a"))
    r = req(zones=["xa-a"], variants=[{"language": "vi", "source": TTS},
                                      {"language": "bahnar", "source": BAHNAR}])
    with pytest.raises(Invalid) as e:
        plan(r, tree.resolve(["xa-a"]), tree, {"thon-1": (None, ["vi", "bahnar"])})
    assert e.value.code == "variants_overlap" and "thon-1" in e.value.message


@pytest.mark.parametrize("variants", [
    [{"language": "vi", "source": TTS}, {"language": "vi", "source": BAHNAR}],   # twice
    [{"language": "vi", "source": {"kind": "tone"}}],                              # not a variant
    [{"language": "", "source": TTS}],
    [],
])
def test_bad_variants_are_refused(variants):
    with pytest.raises(ValueError):
        req(variants=variants)
