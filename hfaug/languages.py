"""Languages: ISO 639-1/3 codes -> each translation model family's own codes, and expected scripts.

Recipes name languages by ISO code (``hi``, ``mr``, ``ur``, ``sw``; ISO 639-3 such as ``hin`` or
``swh`` works too). Each model family spells them its own way:

    NLLB-200      FLORES-200 codes: hi -> hin_Deva, sw -> swh_Latn, fa -> pes_Arab, ar -> arb_Arab
    IndicTrans2   FLORES-style codes for 22 Indic languages (brx_Deva, sat_Olck, ... beyond NLLB)
    M2M100        ISO 639-1 (``hi``), a few ISO 639-3 (``ast``, ``ceb``, ``ilo``)
    mBART-50      ``hi_IN``, ``sw_KE``, ``en_XX``
    Marian        one model per pair (opus-mt-en-hi), or ``>>hin<<`` target tokens

The script (ISO 15924) of each language drives the wrong-script check of the translate stage.
Nothing here imports transformers: recipes are validated without loading a model.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from .errors import HfaugError

#: the 202 codes of NLLB-200 (FLORES-200), as in its tokenizer
FLORES200: tuple[str, ...] = tuple("""
ace_Arab ace_Latn acm_Arab acq_Arab aeb_Arab afr_Latn ajp_Arab aka_Latn amh_Ethi apc_Arab arb_Arab
ars_Arab ary_Arab arz_Arab asm_Beng ast_Latn awa_Deva ayr_Latn azb_Arab azj_Latn bak_Cyrl bam_Latn
ban_Latn bel_Cyrl bem_Latn ben_Beng bho_Deva bjn_Arab bjn_Latn bod_Tibt bos_Latn bug_Latn bul_Cyrl
cat_Latn ceb_Latn ces_Latn cjk_Latn ckb_Arab crh_Latn cym_Latn dan_Latn deu_Latn dik_Latn dyu_Latn
dzo_Tibt ell_Grek eng_Latn epo_Latn est_Latn eus_Latn ewe_Latn fao_Latn pes_Arab fij_Latn fin_Latn
fon_Latn fra_Latn fur_Latn fuv_Latn gla_Latn gle_Latn glg_Latn grn_Latn guj_Gujr hat_Latn hau_Latn
heb_Hebr hin_Deva hne_Deva hrv_Latn hun_Latn hye_Armn ibo_Latn ilo_Latn ind_Latn isl_Latn ita_Latn
jav_Latn jpn_Jpan kab_Latn kac_Latn kam_Latn kan_Knda kas_Arab kas_Deva kat_Geor knc_Arab knc_Latn
kaz_Cyrl kbp_Latn kea_Latn khm_Khmr kik_Latn kin_Latn kir_Cyrl kmb_Latn kon_Latn kor_Hang kmr_Latn
lao_Laoo lvs_Latn lij_Latn lim_Latn lin_Latn lit_Latn lmo_Latn ltg_Latn ltz_Latn lua_Latn lug_Latn
luo_Latn lus_Latn mag_Deva mai_Deva mal_Mlym mar_Deva min_Latn mkd_Cyrl plt_Latn mlt_Latn mni_Beng
khk_Cyrl mos_Latn mri_Latn zsm_Latn mya_Mymr nld_Latn nno_Latn nob_Latn npi_Deva nso_Latn nus_Latn
nya_Latn oci_Latn gaz_Latn ory_Orya pag_Latn pan_Guru pap_Latn pol_Latn por_Latn prs_Arab pbt_Arab
quy_Latn ron_Latn run_Latn rus_Cyrl sag_Latn san_Deva sat_Beng scn_Latn shn_Mymr sin_Sinh slk_Latn
slv_Latn smo_Latn sna_Latn snd_Arab som_Latn sot_Latn spa_Latn als_Latn srd_Latn srp_Cyrl ssw_Latn
sun_Latn swe_Latn swh_Latn szl_Latn tam_Taml tat_Cyrl tel_Telu tgk_Cyrl tgl_Latn tha_Thai tir_Ethi
taq_Latn taq_Tfng tpi_Latn tsn_Latn tso_Latn tuk_Latn tum_Latn tur_Latn twi_Latn tzm_Tfng uig_Arab
ukr_Cyrl umb_Latn urd_Arab uzn_Latn vec_Latn vie_Latn war_Latn wol_Latn xho_Latn ydd_Hebr yor_Latn
yue_Hant zho_Hans zho_Hant zul_Latn
""".split())

#: IndicTrans2 en-indic targets (ai4bharat/indictrans2-en-indic-1B and its distilled 200M)
INDICTRANS2: tuple[str, ...] = (
    "asm_Beng", "ben_Beng", "brx_Deva", "doi_Deva", "gom_Deva", "guj_Gujr", "hin_Deva", "kan_Knda",
    "kas_Arab", "kas_Deva", "mai_Deva", "mal_Mlym", "mar_Deva", "mni_Beng", "mni_Mtei", "npi_Deva",
    "ory_Orya", "pan_Guru", "san_Deva", "sat_Olck", "snd_Arab", "snd_Deva", "tam_Taml", "tel_Telu",
    "urd_Arab", "eng_Latn",
)

#: ISO 639-1 -> FLORES-200 code (the individual language NLLB was trained on for macrolanguages)
ISO1_TO_FLORES: dict[str, str] = {
    "af": "afr_Latn", "ak": "aka_Latn", "am": "amh_Ethi", "ar": "arb_Arab", "as": "asm_Beng",
    "ay": "ayr_Latn", "az": "azj_Latn", "ba": "bak_Cyrl", "be": "bel_Cyrl", "bg": "bul_Cyrl",
    "bm": "bam_Latn", "bn": "ben_Beng", "bo": "bod_Tibt", "bs": "bos_Latn", "ca": "cat_Latn",
    "cs": "ces_Latn", "cy": "cym_Latn", "da": "dan_Latn", "de": "deu_Latn", "dz": "dzo_Tibt",
    "ee": "ewe_Latn", "el": "ell_Grek", "en": "eng_Latn", "eo": "epo_Latn", "es": "spa_Latn",
    "et": "est_Latn", "eu": "eus_Latn", "fa": "pes_Arab", "ff": "fuv_Latn", "fi": "fin_Latn",
    "fj": "fij_Latn", "fo": "fao_Latn", "fr": "fra_Latn", "ga": "gle_Latn", "gd": "gla_Latn",
    "gl": "glg_Latn", "gn": "grn_Latn", "gu": "guj_Gujr", "ha": "hau_Latn", "he": "heb_Hebr",
    "hi": "hin_Deva", "hr": "hrv_Latn", "ht": "hat_Latn", "hu": "hun_Latn", "hy": "hye_Armn",
    "id": "ind_Latn", "ig": "ibo_Latn", "is": "isl_Latn", "it": "ita_Latn", "ja": "jpn_Jpan",
    "jv": "jav_Latn", "ka": "kat_Geor", "kg": "kon_Latn", "ki": "kik_Latn", "kk": "kaz_Cyrl",
    "km": "khm_Khmr", "kn": "kan_Knda", "ko": "kor_Hang", "kr": "knc_Latn", "ks": "kas_Arab",
    "ku": "kmr_Latn", "ky": "kir_Cyrl", "lb": "ltz_Latn", "lg": "lug_Latn", "li": "lim_Latn",
    "ln": "lin_Latn", "lo": "lao_Laoo", "lt": "lit_Latn", "lv": "lvs_Latn", "mg": "plt_Latn",
    "mi": "mri_Latn", "mk": "mkd_Cyrl", "ml": "mal_Mlym", "mn": "khk_Cyrl", "mr": "mar_Deva",
    "ms": "zsm_Latn", "mt": "mlt_Latn", "my": "mya_Mymr", "nb": "nob_Latn", "ne": "npi_Deva",
    "nl": "nld_Latn", "nn": "nno_Latn", "no": "nob_Latn", "ny": "nya_Latn", "oc": "oci_Latn",
    "om": "gaz_Latn", "or": "ory_Orya", "pa": "pan_Guru", "pl": "pol_Latn", "ps": "pbt_Arab",
    "pt": "por_Latn", "qu": "quy_Latn", "rn": "run_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl",
    "rw": "kin_Latn", "sa": "san_Deva", "sc": "srd_Latn", "sd": "snd_Arab", "sg": "sag_Latn",
    "si": "sin_Sinh", "sk": "slk_Latn", "sl": "slv_Latn", "sm": "smo_Latn", "sn": "sna_Latn",
    "so": "som_Latn", "sq": "als_Latn", "sr": "srp_Cyrl", "ss": "ssw_Latn", "st": "sot_Latn",
    "su": "sun_Latn", "sv": "swe_Latn", "sw": "swh_Latn", "ta": "tam_Taml", "te": "tel_Telu",
    "tg": "tgk_Cyrl", "th": "tha_Thai", "ti": "tir_Ethi", "tk": "tuk_Latn", "tl": "tgl_Latn",
    "tn": "tsn_Latn", "tr": "tur_Latn", "ts": "tso_Latn", "tt": "tat_Cyrl", "tw": "twi_Latn",
    "ug": "uig_Arab", "uk": "ukr_Cyrl", "ur": "urd_Arab", "uz": "uzn_Latn", "vi": "vie_Latn",
    "wo": "wol_Latn", "xh": "xho_Latn", "yi": "ydd_Hebr", "yo": "yor_Latn", "zh": "zho_Hans",
    "zu": "zul_Latn",
}

#: ISO 639-3 macrolanguage (and bibliographic) codes -> the individual language NLLB uses
ISO3_ALIASES: dict[str, str] = {
    "ara": "arb_Arab", "aym": "ayr_Latn", "aze": "azj_Latn", "est": "est_Latn", "fas": "pes_Arab",
    "per": "pes_Arab", "ful": "fuv_Latn", "kau": "knc_Latn", "kur": "kmr_Latn", "lav": "lvs_Latn",
    "mlg": "plt_Latn", "mon": "khk_Cyrl", "msa": "zsm_Latn", "may": "zsm_Latn", "nep": "npi_Deva",
    "nor": "nob_Latn", "ori": "ory_Orya", "orm": "gaz_Latn", "pus": "pbt_Arab", "que": "quy_Latn",
    "sqi": "als_Latn", "alb": "als_Latn", "swa": "swh_Latn", "uzb": "uzn_Latn", "yid": "ydd_Hebr",
    "zho": "zho_Hans", "chi": "zho_Hans", "grn": "grn_Latn", "kon": "kon_Latn", "kok": "gom_Deva",
}

#: the default script where a FLORES language comes in several
DEFAULT_SCRIPT: dict[str, str] = {
    "ace": "Latn", "arb": "Arab", "bjn": "Latn", "kas": "Arab", "knc": "Latn", "min": "Latn",
    "mni": "Beng", "sat": "Olck", "snd": "Arab", "taq": "Latn", "zho": "Hans",
}

#: names, for messages and for "did you mean" on names (``hindi`` -> ``hi``)
NAMES: dict[str, str] = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "as": "Assamese", "az": "Azerbaijani",
    "be": "Belarusian", "bg": "Bulgarian", "bn": "Bengali", "bo": "Tibetan", "bs": "Bosnian",
    "ca": "Catalan", "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German", "el": "Greek",
    "en": "English", "eo": "Esperanto", "es": "Spanish", "et": "Estonian", "eu": "Basque",
    "fa": "Persian", "fi": "Finnish", "fr": "French", "ga": "Irish", "gd": "Scottish Gaelic",
    "gl": "Galician", "gu": "Gujarati", "ha": "Hausa", "he": "Hebrew", "hi": "Hindi",
    "hr": "Croatian", "ht": "Haitian Creole", "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian",
    "ig": "Igbo", "is": "Icelandic", "it": "Italian", "ja": "Japanese", "jv": "Javanese",
    "ka": "Georgian", "kk": "Kazakh", "km": "Khmer", "kn": "Kannada", "ko": "Korean",
    "ks": "Kashmiri", "ku": "Kurdish", "ky": "Kyrgyz", "lb": "Luxembourgish", "lo": "Lao",
    "lt": "Lithuanian", "lv": "Latvian", "mg": "Malagasy", "mi": "Maori", "mk": "Macedonian",
    "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi", "ms": "Malay", "mt": "Maltese",
    "my": "Burmese", "ne": "Nepali", "nl": "Dutch", "no": "Norwegian", "or": "Odia",
    "pa": "Punjabi", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese", "qu": "Quechua",
    "ro": "Romanian", "ru": "Russian", "rw": "Kinyarwanda", "sa": "Sanskrit", "sd": "Sindhi",
    "si": "Sinhala", "sk": "Slovak", "sl": "Slovenian", "so": "Somali", "sq": "Albanian",
    "sr": "Serbian", "sv": "Swedish", "sw": "Swahili", "ta": "Tamil", "te": "Telugu",
    "tg": "Tajik", "th": "Thai", "ti": "Tigrinya", "tl": "Tagalog", "tr": "Turkish", "tt": "Tatar",
    "ug": "Uyghur", "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese",
    "wo": "Wolof", "xh": "Xhosa", "yi": "Yiddish", "yo": "Yoruba", "zh": "Chinese", "zu": "Zulu",
    "brx": "Bodo", "doi": "Dogri", "gom": "Konkani", "mai": "Maithili", "mni": "Manipuri",
    "sat": "Santali", "bho": "Bhojpuri", "awa": "Awadhi", "mag": "Magahi", "hne": "Chhattisgarhi",
}

#: ISO 15924 script -> the first word(s) of the Unicode character names of that script
SCRIPT_NAMES: dict[str, tuple[str, ...]] = {
    "Latn": ("LATIN",), "Deva": ("DEVANAGARI",), "Arab": ("ARABIC",), "Beng": ("BENGALI",),
    "Gujr": ("GUJARATI",), "Guru": ("GURMUKHI",), "Orya": ("ORIYA",), "Taml": ("TAMIL",),
    "Telu": ("TELUGU",), "Knda": ("KANNADA",), "Mlym": ("MALAYALAM",), "Sinh": ("SINHALA",),
    "Cyrl": ("CYRILLIC",), "Grek": ("GREEK",), "Hebr": ("HEBREW",), "Armn": ("ARMENIAN",),
    "Geor": ("GEORGIAN",), "Ethi": ("ETHIOPIC",), "Thai": ("THAI",), "Laoo": ("LAO",),
    "Khmr": ("KHMER",), "Mymr": ("MYANMAR",), "Tibt": ("TIBETAN",), "Hang": ("HANGUL", "CJK"),
    "Hans": ("CJK",), "Hant": ("CJK",), "Jpan": ("HIRAGANA", "KATAKANA", "CJK"),
    "Olck": ("OL",), "Mtei": ("MEETEI",), "Tfng": ("TIFINAGH",),
}

_ISO3_OF_ISO1 = {iso1: flores.split("_")[0] for iso1, flores in ISO1_TO_FLORES.items()}


@dataclass(frozen=True)
class Language:
    """One target (or source) language: the ISO code the recipe used and what models need."""

    code: str  # as written in the recipe (dataset names and the ``lang`` column use it)
    flores: str  # FLORES-200-style code, e.g. hin_Deva (also IndicTrans2's)
    iso1: str | None  # two-letter code where there is one (M2M100, mBART-50)

    @property
    def iso3(self) -> str:
        return self.flores.split("_")[0]

    @property
    def script(self) -> str:
        return self.flores.split("_")[1]

    @property
    def name(self) -> str:
        return NAMES.get(self.code) or NAMES.get(self.iso1 or "") or NAMES.get(self.iso3) or self.code


@lru_cache(maxsize=1)
def _flores_by_iso3() -> dict[str, str]:
    """Every FLORES-style code we know (NLLB and IndicTrans2), by its ISO 639-3 part."""
    by_iso3: dict[str, list[str]] = {}
    for code in (*FLORES200, *INDICTRANS2):
        by_iso3.setdefault(code.split("_")[0], []).append(code)
    out = {}
    for iso3, codes in by_iso3.items():
        preferred = f"{iso3}_{DEFAULT_SCRIPT[iso3]}" if iso3 in DEFAULT_SCRIPT else None
        out[iso3] = preferred if preferred in codes else codes[0]
    return out


def known_codes() -> list[str]:
    """Every ISO code :func:`get_language` accepts."""
    return sorted({*ISO1_TO_FLORES, *ISO3_ALIASES, *_flores_by_iso3()})


def get_language(code: str, where: str = "translate.languages") -> Language:
    """The :class:`Language` of an ISO 639-1/3 code; an unknown code is a user error."""
    key = str(code).strip()
    lower = key.lower()
    if lower in ISO1_TO_FLORES:
        return Language(key, ISO1_TO_FLORES[lower], lower)
    if lower in ISO3_ALIASES:
        flores = ISO3_ALIASES[lower]
        return Language(key, flores, _iso1_of(flores.split("_")[0]))
    if lower in _flores_by_iso3():
        return Language(key, _flores_by_iso3()[lower], _iso1_of(lower))
    raise HfaugError(f"{where}: unknown language '{code}'; use an ISO 639-1/3 code{_suggest(key)}")


def _iso1_of(iso3: str) -> str | None:
    for iso1, other in _ISO3_OF_ISO1.items():
        if other == iso3:
            return iso1
    return None


def _suggest(code: str) -> str:
    """`` (did you mean 'hi' (Hindi)?)`` from codes, names and model codes like ``hin_Deva``."""
    import difflib

    lower = code.lower()
    # a model-specific code (hin_Deva, hi_IN, >>hin<<) where an ISO code belongs
    stem = re.split(r"[_\-]", lower.strip("<>"))[0]
    if stem and stem != lower:
        for candidate in (stem, _iso1_of(stem)):
            if candidate and (candidate in ISO1_TO_FLORES or candidate in _flores_by_iso3()):
                return f" (did you mean '{candidate}'?)"
    by_name = {name.lower(): iso for iso, name in NAMES.items()}
    close_names = difflib.get_close_matches(lower, by_name, n=1, cutoff=0.7)
    if close_names:
        iso = by_name[close_names[0]]
        return f" (did you mean '{iso}' ({NAMES[iso]})?)"
    close = difflib.get_close_matches(lower, known_codes(), n=3, cutoff=0.6)
    if close:
        return " (close matches: " + ", ".join(f"'{c}'" for c in close) + ")"
    return ""


def close_matches(code: str, covered: list[str], n: int = 5) -> list[str]:
    """Languages among ``covered`` (ISO codes) near ``code``: same script first (Bodo -> Hindi,
    Marathi), then similar names, then similar codes."""
    import difflib

    lower = code.lower()
    out: list[str] = []
    try:
        script = get_language(code).script
        out += [c for c in ("hi", "mr", "ne", "ur", "bn", "sw") if c in covered and get_language(c).script == script]
        out += [c for c in covered if len(c) == 2 and get_language(c).script == script]
    except HfaugError:
        pass
    names = {NAMES[c].lower(): c for c in covered if c in NAMES}
    target = NAMES.get(lower, lower).lower()
    out += [names[m] for m in difflib.get_close_matches(target, names, n=n, cutoff=0.6)]
    out += difflib.get_close_matches(lower, covered, n=n, cutoff=0.6)
    seen: list[str] = []
    for c in out:
        if c not in seen and c != lower:
            seen.append(c)
    return seen[:n]


# ---------------------------------------------------------------------------------------------
# model families


FAMILIES = ("nllb", "indictrans2", "m2m100", "mbart50", "marian")


def m2m100_code(lang: Language, supported: set[str]) -> str | None:
    for candidate in (lang.code.lower(), lang.iso1, lang.iso3):
        if candidate and candidate in supported:
            return candidate
    return None


def mbart50_code(lang: Language, supported: set[str]) -> str | None:
    for code in sorted(supported):
        if lang.iso1 and code.split("_")[0] == lang.iso1:
            return code
    return None


def marian_code(lang: Language, supported: set[str]) -> str | None:
    """The ``>>xxx<<`` target token of a multi-target Marian model, if it has one for ``lang``."""
    for candidate in (lang.flores, lang.iso3, lang.iso1, lang.code.lower()):
        if candidate and f">>{candidate}<<" in supported:
            return f">>{candidate}<<"
    return None


def marian_pair(model_id: str) -> tuple[str, str] | None:
    """(source, target) of a single-pair Marian model named like ``Helsinki-NLP/opus-mt-en-hi``."""
    match = re.search(r"opus-mt-(?:tc-big-)?([a-z]{2,3})-([a-z]{2,3})(?:$|[^a-z])", model_id.lower())
    return (match.group(1), match.group(2)) if match else None


def same_language(a: str, lang: Language) -> bool:
    """Whether ISO code ``a`` names ``lang`` (``sw`` vs ``swh``, ``hi`` vs ``hin``)."""
    try:
        return get_language(a).flores.split("_")[0] == lang.iso3
    except HfaugError:
        return False


# ---------------------------------------------------------------------------------------------
# scripts


def char_script(ch: str) -> str | None:
    """The Unicode script word of a letter (``LATIN``, ``DEVANAGARI``, ``CJK``, ...)."""
    try:
        return unicodedata.name(ch).split(" ")[0]
    except ValueError:
        return None


def script_share(text: str, script: str) -> float | None:
    """Share of the letters of ``text`` written in ``script`` (ISO 15924); None without letters
    or for a script we cannot check."""
    names = SCRIPT_NAMES.get(script)
    if names is None:
        return None
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return None
    hits = sum(1 for ch in letters if char_script(ch) in names)
    return hits / len(letters)
