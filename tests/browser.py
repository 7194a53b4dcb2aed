"""Browser tests' support: Debian's headless Chromium driven by Selenium through Debian's chromedriver (nothing is
downloaded), explicit waits, and screenshots checked by a small PNG reader (no imaging library)."""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.wait import WebDriverWait

# The driver and browser paths are always given, so Selenium never asks Selenium Manager for them; should a later
# Selenium consult it anyway, it stays offline (no driver or browser download) and sends no usage statistics.
os.environ["SE_OFFLINE"] = "true"
os.environ["SE_AVOID_STATS"] = "true"

#: the browser window; headless Chromium still draws a window frame, so the viewport (and a screenshot) is smaller
WINDOW_SIZE = (1280, 900)
#: bounded waits: a page load, an executed script, and the default of `wait_for_*`
PAGE_LOAD_SECONDS = 15
SCRIPT_SECONDS = 10
WAIT_SECONDS = 10
#: how often `wait_for_*` look again (Selenium's default, half a second, is most of a local page's load time)
POLL_SECONDS = 0.05

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root in a container, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",  # containers' /dev/shm is often too small for Chromium
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-pings",
    "--metrics-recording-only",
    "--no-proxy-server",  # tests talk to 127.0.0.1 only
    "--password-store=basic",
    "--force-color-profile=srgb",  # screenshots' colours as the page's CSS says
    "--hide-scrollbars",
    "--mute-audio",
)


def find_chromium() -> tuple[str, str]:
    """The paths of Debian's chromium and chromedriver (`SE_CHROMEDRIVER` names another driver, as in Selenium);
    an AssertionError names whichever is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("SE_CHROMEDRIVER") or shutil.which("chromedriver")
    missing = []
    if not browser:
        missing.append("chromium (Debian package chromium)")
    if not driver or not Path(driver).is_file():
        missing.append("chromedriver (Debian package chromium-driver)")
    assert not missing, ("browser tests need " + " and ".join(missing)
                         + "; scripts/install-system-packages installs them")
    return browser, driver


@contextlib.contextmanager
def chromium_session(tmp_path: Path, *, window_size: tuple[int, int] = WINDOW_SIZE,
                     page_load_timeout: float = PAGE_LOAD_SECONDS,
                     script_timeout: float = SCRIPT_SECONDS) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile in `tmp_path`, for the duration of the block; the browser and its
    chromedriver are always quit afterwards. chromedriver's and the browser's output go to
    `tmp_path/chromedriver.log`."""
    browser, driver_path = find_chromium()
    tmp_path = Path(tmp_path)
    tmp_path.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument("--window-size={},{}".format(*window_size))
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    # Tests wait explicitly (WebDriverWait); an implicit wait would slow every failing lookup instead.
    options.timeouts = {"implicit": 0, "pageLoad": int(page_load_timeout * 1000), "script": int(script_timeout * 1000)}
    service = Service(executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver: webdriver.Chrome) -> str:
    """The visible text of the current page's body ("" before a body exists)."""
    bodies = driver.find_elements(By.TAG_NAME, "body")
    return bodies[0].text if bodies else ""


def _until(driver: webdriver.Chrome, condition, timeout: float, expected: str):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=POLL_SECONDS).until(condition)
    except TimeoutException:
        raise AssertionError(f"waited {timeout}s for {expected} at {driver.current_url}; the page reads:\n"
                             f"{page_text(driver)[:2000]}") from None


def wait_for_text(driver: webdriver.Chrome, text: str, timeout: float = WAIT_SECONDS,
                  locator: tuple[str, str] = (By.TAG_NAME, "body")) -> WebElement:
    """Wait until the element at `locator` (the body) shows `text`; returns that element."""
    _until(driver, expected_conditions.text_to_be_present_in_element(locator, text), timeout,
           f"the text {text!r} in {locator[1]!r}")
    return driver.find_element(*locator)


def wait_for_element(driver: webdriver.Chrome, by: str, value: str, timeout: float = WAIT_SECONDS) -> WebElement:
    """Wait until an element found `by` `value` is visible; returns it."""
    return _until(driver, expected_conditions.visibility_of_element_located((by, value)), timeout,
                  f"a visible element {by}={value!r}")


def wait_for_title(driver: webdriver.Chrome, title: str, timeout: float = WAIT_SECONDS) -> None:
    """Wait until the page's title is `title` (a new page has loaded)."""
    _until(driver, expected_conditions.title_is(title), timeout, f"the title {title!r}")


# --- screenshots ---------------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: channels per pixel of the PNG colour types the reader decodes (8 bits each): grey, RGB, grey+alpha, RGBA
PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}
#: a bound on a decoded image (a 1280x900 RGBA screenshot is 4.6 MB)
PNG_MAX_BYTES = 64 * 1024 * 1024
#: the share of a screenshot's pixels that must differ from its commonest colour for it not to be blank: in the
#: default viewport, about 30 characters of 16px text, or 5 of an <h1>
NOT_BLANK_SHARE = 0.001


@dataclass(frozen=True)
class PngImage:
    """A decoded 8-bit PNG: `pixels` holds `height` rows of `width` pixels of `channels` bytes each."""

    width: int
    height: int
    channels: int
    pixels: bytes

    def pixel(self, x: int, y: int) -> tuple[int, ...]:
        """The channel values of the pixel in column `x` of row `y`."""
        start = (y * self.width + x) * self.channels
        return tuple(self.pixels[start:start + self.channels])

    def colour_counts(self) -> Counter:
        """How many pixels have each colour (a tuple of channel values)."""
        return Counter(zip(*(self.pixels[channel::self.channels] for channel in range(self.channels)), strict=True))


def _add_bytes(first: bytes, second: bytes) -> bytes:
    """Bytewise (first + second) mod 256 in a few big-integer operations instead of a loop over bytes: the low seven
    bits of each byte add without carrying into the next byte, the top bit is the exclusive or of both top bits
    and that carry."""
    size = len(first)
    low, high = int.from_bytes(b"\x7f" * size, "big"), int.from_bytes(b"\x80" * size, "big")
    x, y = int.from_bytes(first, "big"), int.from_bytes(second, "big")
    return (((x & low) + (y & low)) ^ ((x ^ y) & high)).to_bytes(size, "big")


def _unfilter_row(filter_type: int, line: bytes, prior: bytes, bpp: int) -> bytes:
    """Undo one scanline's filter (PNG specification, section 7.3 / 9): `prior` is the previous row, unfiltered
    (zeros above the first row), `bpp` the bytes per pixel."""
    if filter_type == 0:  # None
        return line
    if filter_type == 1:  # Sub: each byte plus the one a pixel to its left, i.e. a running sum per channel
        row = bytearray(len(line))
        for channel in range(bpp):
            row[channel::bpp] = bytes(total & 0xFF for total in accumulate(line[channel::bpp]))
        return bytes(row)
    if filter_type == 2:  # Up
        return _add_bytes(line, prior)
    # Average and Paeth depend on the byte just decoded: a loop, over rows padded by one pixel of zeros on the left.
    row = bytearray(bpp) + bytearray(line)
    above = bytes(bpp) + prior
    if filter_type == 3:  # Average
        for i in range(bpp, len(row)):
            row[i] = (row[i] + ((row[i - bpp] + above[i]) >> 1)) & 0xFF
    elif filter_type == 4:  # Paeth
        for i in range(bpp, len(row)):
            a, b, c = row[i - bpp], above[i], above[i - bpp]
            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
            if pa <= pb and pa <= pc:
                predictor = a
            elif pb <= pc:
                predictor = b
            else:
                predictor = c
            row[i] = (row[i] + predictor) & 0xFF
    else:
        raise ValueError(f"PNG scanline with unknown filter type {filter_type}")
    return bytes(row[bpp:])


def read_png(data: bytes) -> PngImage:
    """Decode a non-interlaced 8-bit grey, grey+alpha, RGB or RGBA PNG (chunk CRCs checked); ValueError otherwise."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG (no PNG signature)")
    position, header, compressed = len(PNG_SIGNATURE), None, []
    while True:
        if position + 12 > len(data):
            raise ValueError("truncated PNG (no IEND chunk)")
        (length,) = struct.unpack(">I", data[position:position + 4])
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        if len(body) != length or position + 12 + length > len(data):
            raise ValueError(f"truncated PNG chunk {kind!r}")
        (crc,) = struct.unpack(">I", data[position + 8 + length:position + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"PNG chunk {kind!r} fails its CRC")
        position += 12 + length
        if header is None and kind != b"IHDR":
            raise ValueError("PNG does not start with an IHDR chunk")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed.append(body)
        elif kind == b"IEND":
            break
    width, height, bit_depth, colour_type, compression, filter_method, interlace = header
    if bit_depth != 8 or colour_type not in PNG_CHANNELS or (compression, filter_method, interlace) != (0, 0, 0):
        raise ValueError(f"unsupported PNG: bit depth {bit_depth}, colour type {colour_type}, interlace {interlace}"
                         " (read: 8-bit grey, grey+alpha, RGB and RGBA, not interlaced)")
    channels = PNG_CHANNELS[colour_type]
    stride = width * channels
    expected = height * (1 + stride)
    if not width or not height or expected > PNG_MAX_BYTES:
        raise ValueError(f"PNG of {width}x{height} pixels is empty or too large")
    try:
        raw = zlib.decompressobj().decompress(b"".join(compressed), expected + 1)
    except zlib.error as error:
        raise ValueError(f"PNG image data does not inflate: {error}") from None
    if len(raw) != expected:
        raise ValueError(f"PNG image data holds {len(raw)} bytes for {expected} expected")
    rows, prior = [], bytes(stride)
    for start in range(0, expected, 1 + stride):
        prior = _unfilter_row(raw[start], raw[start + 1:start + 1 + stride], prior, channels)
        rows.append(prior)
    return PngImage(width, height, channels, b"".join(rows))


def save_screenshot(driver: webdriver.Chrome, path: Path) -> Path:
    """Save a PNG screenshot of the browser's viewport at `path` (its folder created); returns `path`."""
    png = driver.get_screenshot_as_png()
    assert png.startswith(PNG_SIGNATURE), f"the browser's screenshot is not a PNG: {png[:16]!r}"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    return path


def assert_not_blank(path: Path, min_share: float = NOT_BLANK_SHARE) -> PngImage:
    """Assert that the PNG at `path` decodes and that more than `min_share` of its pixels differ from its commonest
    colour (a blank page, or one with a stray mark, is a single colour); returns the decoded image."""
    try:
        image = read_png(Path(path).read_bytes())
    except ValueError as error:
        raise AssertionError(f"{path} is not a readable PNG: {error}") from None
    counts = image.colour_counts()
    colour, commonest = counts.most_common(1)[0]
    total = image.width * image.height
    share = 1 - commonest / total
    assert share > min_share, (f"{path} looks blank: {share:.3%} of its {image.width}x{image.height} pixels differ "
                               f"from its commonest colour {colour} (more than {min_share:.2%} expected)")
    return image
