"""control/variants.py: which voice and which language variants each zone airs, and how zones
are grouped into engine broadcasts."""
import pytest

from control.sources import BroadcastRequest
from control.variants import media_ids, plan, texts, zone_defaults
from streamer.mixer.arbitration import Level
from streamer.port import StartBroadcast, ToneAudio
from streamer.zones import Zone, ZoneTree
from tests.unit.engine_rig import Rig, decode_zone, dominant_freq

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
    got = {g.parts[0][1].voice: (set(g.zones), g.targets, g.alone) for g in groups}
    # the province zone is addressed alone (it may have receivers registered at run time that
    # the tree does not show), Xã A as a subtree, so Xã B (southern voice) does not hear the
    # central reading too
    assert got == {"vi-vn-x-central": ({"tinh", "xa-a", "thon-1", "thon-2"}, ("tinh", "xa-a"),
                                       ("tinh",)),
                   "vi-vn-x-south": ({"xa-b", "lang-b"}, ("xa-b",), ())}


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
    # Xã A itself (no fixed address: its receivers may register at run time) airs Vietnamese
    assert got == {("vi",): ({"xa-a", "thon-2"}, ("xa-a", "thon-2")),
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


@pytest.mark.parametrize("own", [[("127.0.0.1", 9)], []])
def test_a_parent_above_children_that_differ_airs_its_own_sequence_alone(own):
    # Xã A reads Vietnamese only (loudspeakers of its own, or receivers registered at run time
    # that the tree does not show); Thôn 1 below it adds Bahnar, Thôn 2 inherits Xã A's
    tree = tree_of(Zone("xa-a", unicast=own), Zone("thon-1", parent="xa-a"),
                   Zone("thon-2", parent="xa-a"), Zone("xom", parent="thon-1"))
    r = req(zones=["xa-a"], variants=[{"language": "vi", "source": TTS},
                                      {"language": "bahnar", "source": BAHNAR}])
    groups = plan(r, tree.resolve(["xa-a"]), tree, {"thon-1": (None, ["vi", "bahnar"])})
    got = {tuple(g.languages): (set(g.zones), g.targets, g.alone) for g in groups}
    assert got == {("vi",): ({"xa-a", "thon-2"}, ("xa-a", "thon-2"), ("xa-a",)),
                   ("vi", "bahnar"): ({"thon-1", "xom"}, ("thon-1",), ())}


def _random_tree(rng):
    t = ZoneTree()
    ids = []
    for i in range(rng.randint(1, 25)):
        parent = rng.choice(ids) if ids and rng.random() < 0.85 else None
        t.add(Zone(f"z{i}", parent=parent, language=rng.choice(["vi", "hre"]),
                   unicast=[("127.0.0.1", 9000 + i)] if rng.random() < 0.5 else []))
        ids.append(f"z{i}")
    speech = {z: (rng.choice([None, "vi", "vi-vn-x-south"]),
                  rng.choice([[], ["vi"], ["vi", "bahnar"], ["hre", "vi"], ["bahnar"]]))
              for z in ids if rng.random() < 0.5}
    return t, ids, speech


@pytest.mark.parametrize("seed", range(60))
def test_every_reached_zone_is_in_exactly_one_group_and_its_targets_reach_it_alone(seed):
    import random
    rng = random.Random(seed)
    tree, ids, speech = _random_tree(rng)
    zones = rng.sample(ids, rng.randint(1, min(3, len(ids))))
    reached = tree.resolve(zones)
    for kw in ({"variants": [{"language": "vi", "source": TTS},
                             {"language": "bahnar", "source": BAHNAR},
                             {"language": "hre", "source": HRE}]},
               {"source": TTS}):
        groups = plan(req(zones=zones, **kw), reached, tree, speech)
        seen: list[str] = []
        for g in groups:
            assert set(g.alone) <= set(g.targets)
            # what the engine reaches with these targets is exactly the group's zones
            assert tree.resolve(list(g.targets), g.alone) == set(g.zones)
            seen += sorted(g.zones)
        assert sorted(seen) == sorted(reached)   # a partition: each zone once, none left out


@pytest.mark.parametrize("variants", [
    [{"language": "vi", "source": TTS}, {"language": "vi", "source": BAHNAR}],   # twice
    [{"language": "vi", "source": {"kind": "tone"}}],                              # not a variant
    [{"language": "", "source": TTS}],
    [],
])
def test_bad_variants_are_refused(variants):
    with pytest.raises(ValueError):
        req(variants=variants)


def test_a_parent_with_only_registered_receivers_hears_its_group_and_children_theirs():
    """The commune zone has no fixed address (its clusters sit behind carrier NAT and register
    at run time: SetDestinations); Thôn 1 adds Bahnar, Thôn 2 inherits the commune's language.
    Through the engine, every zone hears its own group's audio: the commune's registered
    receivers too, and only once."""
    tree = tree_of(Zone("xa"), Zone("thon-1", parent="xa", unicast=[("127.0.0.1", 9001)]),
                   Zone("thon-2", parent="xa", unicast=[("127.0.0.1", 9002)]))
    rig = Rig(tree)
    rig.run(1)
    rig.set_destinations("xa", [("10.0.0.7", 5004), ("10.0.0.8", 5004)])
    r = req(zones=["xa"], variants=[{"language": "vi", "source": TTS},
                                    {"language": "bahnar", "source": BAHNAR}])
    groups = plan(r, tree.resolve(["xa"]), tree, {"thon-1": (None, ["vi", "bahnar"])})
    assert len(groups) == 2
    # stand-ins for each group's sequence: a tone per group, so what each zone hears says
    # which group reached it
    freq = {("vi",): 500.0, ("vi", "bahnar"): 900.0}
    for i, g in enumerate(groups):
        rig.rt.submit(StartBroadcast(id=f"v.{i}", targets=g.targets, alone=g.alone,
                                     level=Level.NORMAL,
                                     source=ToneAudio(freq[tuple(g.languages)], 2.0)))
    rig.fan.sent.clear()
    rig.run(30)
    assert ("10.0.0.7", 5004) in rig.fan.dests["xa"]
    heard = {z: decode_zone(rig.fan, z) for z in ("xa", "thon-1", "thon-2")}
    for z, pcm in heard.items():
        assert pcm.size >= 25 * 960, z          # every tick, one stream per zone
    assert abs(dominant_freq(heard["xa"][4800:]) - 500) < 15
    assert abs(dominant_freq(heard["thon-2"][4800:]) - 500) < 15
    assert abs(dominant_freq(heard["thon-1"][4800:]) - 900) < 15
    reached = {b.id: set(b.reached_zones) for b in rig.rt.broadcasts()}
    assert sorted(map(sorted, reached.values())) == [["thon-1"], ["thon-2", "xa"]]
