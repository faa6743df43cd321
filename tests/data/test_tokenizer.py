from transformers import AutoTokenizer

from seedstory.tokenizer import BOI, EOI, add_image_tokens, build_tiny_tokenizer, image_token, image_token_ids

TEXTS = ["Tom the red circle hops in on the left.", "[INST] Mia grows big in the middle."] * 20


def test_image_token_names():
    assert image_token(0) == "<img_00000>" and image_token(63) == "<img_00063>"


def test_tiny_tokenizer_has_one_id_per_special_token_and_round_trips(tmp_path):
    tokenizer = build_tiny_tokenizer(TEXTS, vocab_size=320, image_tokens=16)
    ids = image_token_ids(tokenizer, 16)
    assert len(ids.image) == 16 and len({ids.boi, ids.eoi, *ids.image}) == 18
    assert ids.vocab_size == len(tokenizer) <= 320 + 18
    text = f"Tom {BOI}{image_token(0)}{image_token(15)}{EOI} walks"
    encoded = tokenizer.encode(text, add_special_tokens=False)
    assert [ids.boi, ids.image[0], ids.image[15], ids.eoi] == encoded[encoded.index(ids.boi): encoded.index(ids.eoi) + 1]
    assert tokenizer.decode(encoded) == text
    assert tokenizer.encode("Tom")[0] == ids.bos
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert image_token_ids(reloaded, 16) == ids
    assert reloaded.encode(text) == tokenizer.encode(text)


def test_add_image_tokens_extends_any_tokenizer_once():
    tokenizer = build_tiny_tokenizer(TEXTS, vocab_size=300, image_tokens=4)
    before = len(tokenizer)
    assert add_image_tokens(tokenizer, 8) == 4
    assert add_image_tokens(tokenizer, 8) == 0
    assert len(tokenizer) == before + 4 and len(image_token_ids(tokenizer, 8).image) == 8
