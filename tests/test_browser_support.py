"""The browser tests' support (tests/browser.py): Selenium drives Debian's headless Chromium through a form served on
127.0.0.1, cookies included; screenshots of pages pass the blankness check and of a blank page fail it; the PNG
reader decodes every filter type of hand-made PNGs as Chromium does; a session always quits its browser."""

from __future__ import annotations

import base64
import html
import random
import struct
import time
import zlib
from pathlib import Path
from urllib.parse import quote

import pytest
from selenium.webdriver.common.by import By
from werkzeug.wrappers import Request, Response

from tests.browser import (
    PAGE_LOAD_SECONDS,
    PNG_CHANNELS,
    SCRIPT_SECONDS,
    assert_not_blank,
    chromium_session,
    read_png,
    save_screenshot,
    wait_for_element,
    wait_for_text,
    wait_for_title,
)
from tests.servers import serve_wsgi

NO_FAVICON = '<link rel="icon" href="data:,">'  # no request for /favicon.ico

FORM_PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Leave a message</title>{NO_FAVICON}</head>
<body><h1>Leave a message</h1>
<form method="post" action="/echo">
  <label>Message <input name="message" id="message" autocomplete="off"></label>
  <button type="submit" id="send">Send</button>
</form></body></html>"""

ECHO_PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Message received</title>{NO_FAVICON}</head>
<body><h1 id="echo">You said: {{message}}</h1><p id="session">Session cookie received: {{session}}</p></body></html>"""

BLANK_PAGE = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Blank</title>{NO_FAVICON}</head><body></body></html>"""

SESSION = "session-7f3a9c"
MESSAGE = "Hello <b>there</b> & goodbye"


class EchoSite:
    """A form whose submitted message the next page echoes. The form's page sets an HttpOnly session cookie and a
    cookie scripts may read; every POST's form and cookies are recorded."""

    def __init__(self) -> None:
        self.url = ""
        self.posts: list[tuple[dict, dict]] = []

    def __call__(self, environ, start_response):
        request = Request(environ)
        if request.path == "/" and request.method == "GET":
            response = Response(FORM_PAGE, content_type="text/html; charset=utf-8")
            response.set_cookie("session", SESSION, httponly=True, samesite="Lax")
            response.set_cookie("theme", "dark", samesite="Lax")
        elif request.path == "/echo" and request.method == "POST":
            self.posts.append((request.form.to_dict(), dict(request.cookies)))
            response = Response(ECHO_PAGE.format(message=html.escape(request.form.get("message", "")),
                                                 session="yes" if request.cookies.get("session") == SESSION else "no"),
                                content_type="text/html; charset=utf-8")
        elif request.path == "/blank":
            response = Response(BLANK_PAGE, content_type="text/html; charset=utf-8")
        else:
            response = Response("not found", status=404, content_type="text/plain")
        return response(environ, start_response)


@pytest.fixture(scope="module")
def site():
    """The echo site served on 127.0.0.1 for the module."""
    echo_site = EchoSite()
    with serve_wsgi(echo_site) as url:
        echo_site.url = url
        yield echo_site


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module's tests."""
    with chromium_session(tmp_path_factory.mktemp("chromium")) as driver:
        yield driver


def send_message(browser, site: EchoSite, message: str) -> None:
    """Open the form, type `message`, submit it and wait for the echo page."""
    browser.get(site.url + "/")
    wait_for_element(browser, By.NAME, "message").send_keys(message)
    browser.find_element(By.ID, "send").click()
    wait_for_title(browser, "Message received")


def test_a_typed_and_submitted_message_is_echoed_on_the_next_page(browser, site):
    send_message(browser, site, MESSAGE)
    echo = wait_for_text(browser, f"You said: {MESSAGE}", locator=(By.ID, "echo"))
    assert echo.text == f"You said: {MESSAGE}"  # escaped by the server, shown as typed
    assert site.posts[-1][0] == {"message": MESSAGE}


def test_the_servers_cookies_are_kept_and_the_httponly_one_is_hidden_from_scripts(browser, site):
    browser.get(site.url + "/")
    wait_for_title(browser, "Leave a message")
    session, theme = browser.get_cookie("session"), browser.get_cookie("theme")
    assert session is not None and session["value"] == SESSION and session["httpOnly"] is True
    assert theme is not None and theme["value"] == "dark" and theme["httpOnly"] is False
    visible = browser.execute_script("return document.cookie")
    assert "theme=dark" in visible
    assert "session" not in visible
    send_message(browser, site, "cookie check")
    wait_for_text(browser, "Session cookie received: yes", locator=(By.ID, "session"))
    assert site.posts[-1][1]["session"] == SESSION


def test_waiting_in_vain_fails_with_what_the_page_shows(browser, site):
    browser.get(site.url + "/")
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"(?s)waited 0.3s for the text 'Goodbye'.*Leave a message"):
        wait_for_text(browser, "Goodbye", timeout=0.3)
    assert time.monotonic() - started < 3


def test_a_screenshot_of_the_echo_page_is_not_blank(browser, site, tmp_path):
    send_message(browser, site, MESSAGE)
    path = save_screenshot(browser, tmp_path / "screens" / "echo.png")
    assert path == tmp_path / "screens" / "echo.png"
    image = assert_not_blank(path)
    width, height, ratio = browser.execute_script("return [innerWidth, innerHeight, devicePixelRatio]")
    assert (image.width, image.height) == (round(width * ratio), round(height * ratio))
    assert image.colour_counts().most_common(1)[0][0][:3] == (255, 255, 255)


def test_a_screenshot_of_a_blank_page_fails(browser, site, tmp_path):
    browser.get(site.url + "/blank")
    wait_for_title(browser, "Blank")
    path = save_screenshot(browser, tmp_path / "blank.png")
    with pytest.raises(AssertionError, match=r"blank\.png looks blank: 0\.000% of its \d+x\d+ pixels"):
        assert_not_blank(path)


@pytest.mark.parametrize(("text", "blank"), [("hi", True), ("Every order update is sent to its backend. " * 2, False)],
                         ids=["a_word", "a_line"])
def test_a_stray_word_is_blank_and_a_line_of_text_is_not(browser, tmp_path, text, blank):
    browser.get("data:text/html;charset=utf-8," + quote(f"<p>{text}</p>"))
    path = save_screenshot(browser, tmp_path / "text.png")
    if blank:
        with pytest.raises(AssertionError, match="looks blank"):
            assert_not_blank(path)
    else:
        assert_not_blank(path)


def test_screenshot_pixels_are_the_colours_the_page_painted(browser, tmp_path):
    page = ("<body style='margin:0;background:#fff'>"
            "<div style='width:64px;height:48px;background:rgb(200,30,60)'></div>"
            "<div style='width:64px;height:48px;background:linear-gradient(90deg,#000,rgb(0,128,255))'></div>")
    browser.get("data:text/html;charset=utf-8," + quote(page))
    image = read_png(save_screenshot(browser, tmp_path / "colours.png").read_bytes())
    assert image.pixel(10, 10)[:3] == (200, 30, 60)
    assert image.pixel(63, 47)[:3] == (200, 30, 60)
    assert image.pixel(64, 10)[:3] == (255, 255, 255)
    assert image.pixel(10, 100)[:3] == (255, 255, 255)
    gradient = [image.pixel(x, 70)[2] for x in range(64)]  # blue rises from left to right
    assert gradient[0] < 20 and gradient[-1] > 235 and gradient == sorted(gradient)


# --- the PNG reader, on PNGs made here by the specification's filter definitions -------------------------------------


def paeth_predictor(a: int, b: int, c: int) -> int:
    """The PNG specification's Paeth predictor, as written there."""
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    if pa <= pb and pa <= pc:
        return a
    if pb <= pc:
        return b
    return c


def filter_scanline(filter_type: int, row: bytes, prior: bytes, bpp: int) -> bytes:
    """One scanline filtered with `filter_type`, its filter byte first."""
    filtered = bytearray([filter_type])
    for i, x in enumerate(row):
        a = row[i - bpp] if i >= bpp else 0
        b = prior[i]
        c = prior[i - bpp] if i >= bpp else 0
        predictor = [0, a, b, (a + b) // 2, paeth_predictor(a, b, c)][filter_type]
        filtered.append((x - predictor) % 256)
    return bytes(filtered)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    """A PNG chunk: length, type, data, CRC of type and data."""
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def make_png(width: int, height: int, colour_type: int, pixels: bytes, filters, *, bit_depth: int = 8,
             interlace: int = 0, image_data: bytes | None = None) -> bytes:
    """An 8-bit PNG of `pixels` whose row y is filtered with `filters[y]`, its data split over two IDAT chunks."""
    bpp = PNG_CHANNELS.get(colour_type, 1)
    stride = width * bpp
    if image_data is None:
        rows = [pixels[y * stride:(y + 1) * stride] for y in range(height)]
        image_data = b"".join(filter_scanline(filters[y], rows[y], rows[y - 1] if y else bytes(stride), bpp)
                              for y in range(height))
    compressed = zlib.compress(image_data, 9)
    half = len(compressed) // 2
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"tEXt", b"Comment\x00hand-made")
            + png_chunk(b"IDAT", compressed[:half]) + png_chunk(b"IDAT", compressed[half:]) + png_chunk(b"IEND", b""))


def random_pixels(width: int, height: int, colour_type: int, seed: int) -> bytes:
    """Pixels of random bytes (sums wrap around 256 in every filter)."""
    return random.Random(seed).randbytes(width * height * PNG_CHANNELS[colour_type])


FILTER_NAMES = {0: "none", 1: "sub", 2: "up", 3: "average", 4: "paeth"}
COLOUR_NAMES = {0: "grey", 2: "rgb", 4: "grey_alpha", 6: "rgba"}
WIDTH, HEIGHT = 9, 7
#: (colour type, filter of each row): every filter on every row (the first one too), and all filters mixed
HAND_MADE = [(colour_type, (filter_type,) * HEIGHT) for colour_type in COLOUR_NAMES for filter_type in FILTER_NAMES]
HAND_MADE += [(colour_type, (4, 3, 2, 1, 0, 4, 1)) for colour_type in COLOUR_NAMES]


def case_id(case) -> str:
    colour_type, filters = case
    names = {FILTER_NAMES[f] for f in filters}
    return f"{COLOUR_NAMES[colour_type]}-{names.pop() if len(names) == 1 else 'mixed'}"


@pytest.mark.parametrize("case", HAND_MADE, ids=case_id)
def test_the_reader_decodes_each_filter_type(case):
    colour_type, filters = case
    pixels = random_pixels(WIDTH, HEIGHT, colour_type, seed=colour_type * 10 + filters[0])
    image = read_png(make_png(WIDTH, HEIGHT, colour_type, pixels, filters))
    assert (image.width, image.height, image.channels) == (WIDTH, HEIGHT, PNG_CHANNELS[colour_type])
    assert image.pixels == pixels
    assert image.pixel(WIDTH - 1, HEIGHT - 1) == tuple(pixels[-PNG_CHANNELS[colour_type]:])


@pytest.mark.parametrize("width", [1, 2, 300])
def test_the_reader_decodes_narrow_and_wide_images(width):
    pixels = random_pixels(width, 5, 6, seed=width)
    assert read_png(make_png(width, 5, 6, pixels, (1, 2, 3, 4, 0))).pixels == pixels


def test_chromium_decodes_the_hand_made_pngs_to_the_same_pixels(browser, site):
    """Chromium's own decoder agrees with the reader: the PNGs above are made as the specification says."""
    images, expected = [], []
    for colour_type, filters in HAND_MADE:
        pixels = bytearray(random_pixels(WIDTH, HEIGHT, colour_type, seed=colour_type * 10 + filters[0]))
        channels = PNG_CHANNELS[colour_type]
        if colour_type in (4, 6):  # opaque: a canvas premultiplies alpha, which rounds translucent colours
            pixels[channels - 1::channels] = b"\xff" * (WIDTH * HEIGHT)
        png = make_png(WIDTH, HEIGHT, colour_type, bytes(pixels), filters)
        assert read_png(png).pixels == pixels
        images.append("data:image/png;base64," + base64.b64encode(png).decode())
        expected.append(list(pixels))
    browser.get(site.url + "/blank")
    decoded = browser.execute_async_script("""
        const [sources, done] = arguments;
        const decode = (source) => new Promise((resolve, reject) => {
            const image = new Image();
            image.onload = () => {
                const canvas = document.createElement("canvas");
                canvas.width = image.width;
                canvas.height = image.height;
                const context = canvas.getContext("2d");
                context.drawImage(image, 0, 0);
                resolve(Array.from(context.getImageData(0, 0, image.width, image.height).data));
            };
            image.onerror = () => reject(new Error("undecodable"));
            image.src = source;
        });
        Promise.all(sources.map(decode)).then(done, (error) => done(String(error)));
    """, images)
    assert isinstance(decoded, list), decoded
    for (colour_type, filters), rgba, pixels in zip(HAND_MADE, decoded, expected, strict=True):
        channels = PNG_CHANNELS[colour_type]
        as_rgba = []
        for start in range(0, len(pixels), channels):
            pixel = pixels[start:start + channels]
            colour = pixel[:1] * 3 if colour_type in (0, 4) else pixel[:3]
            as_rgba += [*colour, 255]
        assert rgba == as_rgba, case_id((colour_type, filters))


def test_the_reader_refuses_what_it_cannot_decode():
    pixels = random_pixels(4, 3, 2, seed=1)
    good = make_png(4, 3, 2, pixels, (0, 1, 2))
    refusals = {
        "not a PNG": b"GIF89a" + good[6:],
        "fails its CRC": good[:30] + bytes([good[30] ^ 1]) + good[31:],
        "truncated": good[:-20],
        "colour type 3": make_png(4, 3, 3, bytes(12), (0, 0, 0)),
        "bit depth 16": make_png(4, 3, 2, pixels, (0, 0, 0), bit_depth=16),
        "interlace 1": make_png(4, 3, 2, pixels, (0, 0, 0), interlace=1),
        "holds 38 bytes for 39": make_png(4, 3, 2, pixels, (), image_data=bytes(38)),
        "unknown filter type 5": make_png(4, 3, 2, pixels, (), image_data=b"\x05" + bytes(38)),
    }
    for message, data in refusals.items():
        with pytest.raises(ValueError, match=message):
            read_png(data)


# --- the blankness check, on made-up screenshots -----------------------------------------------------------------


def solid_rgb(width: int, height: int, colour: tuple[int, int, int], marks: int = 0) -> bytes:
    """RGB pixels of one colour, the first `marks` of them black."""
    return bytes(marks * 3) + bytes(colour) * (width * height - marks)


@pytest.mark.parametrize(("colour", "marks"), [((255, 255, 255), 0), ((30, 30, 30), 0), ((255, 255, 255), 9)],
                         ids=["white", "dark", "white_with_a_mark"])
def test_a_single_colour_is_blank(tmp_path, colour, marks):
    path = tmp_path / "shot.png"
    path.write_bytes(make_png(100, 100, 2, solid_rgb(100, 100, colour, marks), (2,) * 100))
    with pytest.raises(AssertionError, match="looks blank"):
        assert_not_blank(path)


def test_enough_other_colour_is_not_blank(tmp_path):
    path = tmp_path / "shot.png"
    path.write_bytes(make_png(100, 100, 2, solid_rgb(100, 100, (255, 255, 255), marks=11), (4,) * 100))
    assert assert_not_blank(path).pixel(0, 0) == (0, 0, 0)
    with pytest.raises(AssertionError, match="looks blank"):
        assert_not_blank(path, min_share=0.2)


def test_an_unreadable_screenshot_fails(tmp_path):
    path = tmp_path / "shot.png"
    path.write_bytes(b"<html>not an image</html>")
    with pytest.raises(AssertionError, match="is not a readable PNG"):
        assert_not_blank(path)


# --- the session itself ------------------------------------------------------------------------------------------


def processes_with_argument(argument: str) -> list[int]:
    """The ids of live processes with `argument` in their command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command_line = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if argument.encode() in command_line:
                found.append(int(entry.name))
    return found


def test_a_session_has_bounded_waits_and_quits_browser_and_driver_even_after_an_error(tmp_path):
    profile = f"--user-data-dir={tmp_path / 'chromium-profile'}"
    with pytest.raises(RuntimeError, match="the test failed"), chromium_session(tmp_path) as driver:
        timeouts = driver.timeouts
        assert (timeouts.implicit_wait, timeouts.page_load, timeouts.script) == (0, PAGE_LOAD_SECONDS, SCRIPT_SECONDS)
        assert driver.capabilities["browserName"] == "chrome"
        chromedriver = driver.service.process
        assert processes_with_argument(profile), "the browser runs with its profile in tmp_path"
        raise RuntimeError("the test failed")
    assert chromedriver.poll() is not None
    deadline = time.monotonic() + 10
    while processes_with_argument(profile) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not processes_with_argument(profile), "the browser outlived its session"
    assert (tmp_path / "chromedriver.log").stat().st_size > 0


def test_missing_browser_and_driver_are_named(tmp_path, monkeypatch):
    only_chromium = tmp_path / "bin"
    only_chromium.mkdir()
    (only_chromium / "chromium").symlink_to("/usr/bin/chromium")
    monkeypatch.delenv("SE_CHROMEDRIVER", raising=False)
    monkeypatch.setenv("PATH", str(only_chromium))
    with (pytest.raises(AssertionError, match=r"^browser tests need chromedriver \(Debian package chromium-driver\);"),
          chromium_session(tmp_path)):
        pass
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with (pytest.raises(AssertionError, match=r"need chromium \(Debian package chromium\) and chromedriver"),
          chromium_session(tmp_path)):
        pass
