"""The web inbox in a real browser: Debian's chromium driven by Selenium
through the system chromedriver (nothing is downloaded at run time).

One browser serves the whole module (starting one costs about a second);
each test gets its own inbox.  Skipped when chromium, chromedriver or
selenium is missing; a failure under SMTPD_COMPAT_REQUIRE_TOOLS=1 (CI).
Set SMTPD_COMPAT_WEB_SCREENSHOT=PATH to also save the docs screenshot
(docs/_static/web-inbox.png) from test_docs_screenshot.

The page's live updates are tested three ways: against a stand-in for the
websocket (a fake ``WebSocket`` put into the page before its script runs,
driven by the test with Mailpit's event payloads), with the socket failing
(the page must fall back to polling), and against the server's own
``/api/events`` when it has one.  Speed is measured in
benchmarks/web_page.py, not here.
"""
import base64
import contextlib
import http.server
import json
import os
import smtplib
import socket
import threading
import time
import urllib.parse
import urllib.request
from email.header import Header
from email.message import EmailMessage

import pytest

from smtpd_compat.controller import Controller
from smtpd_compat.web import StoredMessage, WebInboxServer

from conftest import REQUIRE_TOOLS, require_tool
from test_web import PNG

# A new message must show in an open page within a second (events, or a
# poll twice a second); the bound leaves room for a loaded CI machine.
APPEAR_BOUND = 5.0

HOSTILE_HTML = """<html><head><title>mail</title></head><body>
<h1 id="greeting">Hello <b>from HTML</b></h1>
<p id="target">script did not run</p>
<img id="logo" src="cid:logo@app" alt="logo">
<img id="remote" src="http://198.51.100.7/track.png" alt="">
<a id="jslink" href="javascript:document.getElementById('target').textContent='link ran';parent.postMessage('link','*')">click</a>
<script>
document.getElementById('target').textContent = 'script ran';
parent.postMessage('script', '*');
try { top.document.title = 'pwned'; } catch (e) {}
</script>
<img src="data:," onerror="document.getElementById('target').textContent='onerror ran'">
</body></html>
"""

# A stand-in for the browser's WebSocket, put into the page before its
# script runs.  window.fakeEvents.fail makes every socket fail to open (as
# with a server or proxy without /api/events); emit() delivers one of
# Mailpit's events ({"Type": ..., "Data": ...}) on the newest socket;
# close() drops it.
FAKE_WEBSOCKET = """
(function () {
  var sockets = [];
  window.fakeEvents = {
    fail: %s, sockets: sockets,
    emit: function (event) {
      var s = sockets[sockets.length - 1];
      s.onmessage({data: JSON.stringify(event)});
    },
    close: function () {
      var s = sockets[sockets.length - 1];
      s.readyState = 3;
      s.onclose({code: 1006});
    }
  };
  window.WebSocket = function (url) {
    var self = this;
    this.url = url;
    this.readyState = 0;
    sockets.push(this);
    setTimeout(function () {
      if (window.fakeEvents.fail) {
        self.readyState = 3;
        if (self.onerror) self.onerror({});
        self.onclose({code: 1006});
      } else {
        self.readyState = 1;
        self.onopen({});
      }
    }, 10);
  };
  window.WebSocket.prototype.close = function () {};
})();
"""


@pytest.fixture(scope='module')
def browser():
    chromium = require_tool('chromium')
    chromedriver = require_tool('chromedriver')
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        if REQUIRE_TOOLS:
            pytest.fail('selenium is not installed (pip install -e .[test])')
        pytest.skip('selenium is not installed')
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ('--headless=new', '--no-sandbox', '--disable-dev-shm-usage',
                '--disable-gpu', '--window-size=1280,900',
                '--no-first-run', '--disable-extensions'):
        options.add_argument(arg)
    # The driver's path is given: Selenium Manager has nothing to fetch.
    driver = webdriver.Chrome(service=Service(executable_path=chromedriver),
                              options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def inbox(browser):
    browser.set_window_size(1280, 900)
    controller = Controller(WebInboxServer, web=('127.0.0.1', 0)).start()
    try:
        yield controller
    finally:
        controller.stop()


@contextlib.contextmanager
def fake_events(browser, fail=False):
    """Pages loaded inside the block get FAKE_WEBSOCKET instead of the
    browser's WebSocket."""
    source = FAKE_WEBSOCKET % ('true' if fail else 'false')
    added = browser.execute_cdp_cmd('Page.addScriptToEvaluateOnNewDocument',
                                    {'source': source})
    try:
        yield
    finally:
        browser.execute_cdp_cmd('Page.removeScriptToEvaluateOnNewDocument',
                                {'identifier': added['identifier']})


@contextlib.contextmanager
def color_scheme(browser, scheme):
    browser.execute_cdp_cmd('Emulation.setEmulatedMedia', {
        'features': [{'name': 'prefers-color-scheme', 'value': scheme}]})
    try:
        yield
    finally:
        browser.execute_cdp_cmd('Emulation.setEmulatedMedia', {'features': []})


def send(controller, message, to=('bob@example.org',)):
    with smtplib.SMTP(controller.hostname, controller.port, timeout=30) as c:
        if isinstance(message, bytes):
            c.sendmail('ann@example.org', list(to), message)
        else:
            c.send_message(message, to_addrs=list(to))


def store(controller, subject, sender='bulk@example.org', received=None,
          body='body'):
    """Put a message straight into the inbox (no SMTP session)."""
    raw = ('From: %s\nTo: bob@example.org\nSubject: %s\n\n%s\n'
           % (sender, subject, body)).encode()
    message = StoredMessage(raw, 'ann@example.org', ['bob@example.org'],
                            received=received)
    assert controller.server.inbox.append(message)
    return message.id


def message(subject, html=None, sender='Ann Example <ann@example.org>',
            to='Bob <bob@example.org>', text='Plain text part.',
            attachment=None):
    m = EmailMessage()
    m['From'] = sender
    m['To'] = to
    m['Subject'] = subject
    m.set_content(text)
    if html is not None:
        m.add_alternative(html, subtype='html')
        m.get_payload()[1].add_related(PNG, 'image', 'png', cid='<logo@app>',
                                       filename='logo.png', disposition='inline')
    if attachment is not None:
        m.add_attachment(attachment[1], maintype='application', subtype='pdf',
                         filename=attachment[0])
    return m


def api(controller, path, method='GET', body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(controller.web_url + path, data=data,
                                     method=method)
    with urllib.request.urlopen(request, timeout=30) as r:
        text = r.read()
    return json.loads(text) if r.headers['Content-Type'].startswith('application/json') else text


def wait_until(predicate, timeout=20.0, step=0.02):
    """Poll ``predicate`` until true; an element that went stale (the
    list re-renders when the inbox changes) means "not yet"."""
    from selenium.common.exceptions import StaleElementReferenceException
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError('condition not met within %s s' % timeout)
        time.sleep(step)


def open_page(browser, url):
    """Load the page and wait for its first list."""
    browser.get(url)
    wait_until(lambda: browser.execute_script(
        'return document.getElementById("count").textContent'))


def rows(driver):
    from selenium.webdriver.common.by import By
    return driver.find_elements(By.CSS_SELECTOR, '#list a.row')


def row_cells(browser, index):
    """What the index-th row shows: each cell's text, and its title (the
    hover text) as '<class> title'.  Read in one script, so a list drawn
    anew meanwhile cannot mix two rows."""
    return browser.execute_script("""
        var row = document.querySelectorAll('#list a.row')[arguments[0]], cells = {};
        Array.prototype.forEach.call(row.querySelectorAll('span, time'), function (e) {
          cells[e.className] = e.textContent;
          if (e.title) cells[e.className + ' title'] = e.title;
        });
        return cells;""", index)


def again(action):
    """Do ``action`` (which finds its elements afresh), again if the list
    was drawn anew meanwhile (it is whenever the inbox changes)."""
    from selenium.common.exceptions import StaleElementReferenceException
    for _ in range(20):
        try:
            return action()
        except StaleElementReferenceException:
            time.sleep(0.05)
    raise AssertionError('the list kept changing')


def click_row(browser, index, holding=None, what='a.row'):
    """Click the index-th row (or its ``what``), ``holding`` a modifier key
    down."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    def click():
        target = browser.find_elements(By.CSS_SELECTOR, '#list ' + what)[index]
        if holding is None:
            target.click()
        else:
            ActionChains(browser).key_down(holding).click(target).key_up(holding).perform()
    again(click)


def subjects(browser):
    return browser.execute_script(
        'return Array.from(document.querySelectorAll("#list a.row .subj"),'
        ' function (e) { return e.textContent; })')


def unread_subjects(browser):
    return browser.execute_script(
        'return Array.from(document.querySelectorAll("#list .item.unread .subj"),'
        ' function (e) { return e.textContent; })')


def ticked(browser):
    """Whether each row's box shows as ticked."""
    return browser.execute_script(
        'return Array.from(document.querySelectorAll("#list .sel"),'
        ' function (e) { return e.checked; })')


def live_mode(browser):
    return browser.execute_script('return document.getElementById("live").dataset.mode')


def press(browser, *keys):
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(browser).send_keys(*keys).perform()


def shown_subject(browser):
    from selenium.webdriver.common.by import By
    return browser.find_element(By.ID, 'subject').text


def test_new_mail_appears_without_reload_and_html_is_sandboxed(browser, inbox):
    from selenium.webdriver.common.by import By
    open_page(browser, inbox.web_url)
    assert rows(browser) == []
    # Proof that the page is never reloaded: a mark on the window object.
    browser.execute_script(
        'window.stillTheSamePage = true; window.received = [];'
        'window.addEventListener("message", function (e) {'
        ' window.received.push(String(e.data)); });')

    sent = time.monotonic()
    send(inbox, message('Welcome =?utf-8?q?=E2=9C=93?=', html=HOSTILE_HTML,
                        attachment=('report.pdf', b'%PDF-1.4')))
    wait_until(lambda: rows(browser), timeout=APPEAR_BOUND + 5)
    appeared = time.monotonic() - sent
    print('new message shown in the open page after %.3f s (%s)'
          % (appeared, live_mode(browser)))
    assert appeared < APPEAR_BOUND
    assert browser.execute_script('return window.stillTheSamePage') is True
    # The list shows the sender's name (the address on hover), the decoded
    # subject, the recipient, the attachment mark.
    cells = row_cells(browser, 0)
    assert (cells['from'], cells['from title']) == ('Ann Example', 'ann@example.org')
    assert cells['subj'] == 'Welcome \u2713'
    assert cells['to'] == 'To: Bob <bob@example.org>'
    assert (cells['att'], cells['att title']) == ('1', '1 attachment')

    click_row(browser, 0)
    wait_until(lambda: '/view/' in browser.current_url)
    wait_until(lambda: shown_subject(browser) == 'Welcome \u2713')
    frame = browser.find_element(By.ID, 'html-frame')
    sandbox = frame.get_attribute('sandbox')
    assert 'allow-scripts' not in sandbox and 'allow-same-origin' not in sandbox

    browser.switch_to.frame(frame)
    try:
        wait_until(lambda: browser.find_elements(By.ID, 'greeting'))
        assert browser.find_element(By.ID, 'greeting').text == 'Hello from HTML'
        # The inline image (cid:) loaded from the inbox; the remote one
        # was blocked by the CSP.
        logo = browser.find_element(By.ID, 'logo')
        wait_until(lambda: browser.execute_script(
            'return arguments[0].complete', logo))
        assert browser.execute_script('return arguments[0].naturalWidth', logo) == 1
        remote = browser.find_element(By.ID, 'remote')
        assert browser.execute_script('return arguments[0].naturalWidth', remote) == 0
        # Neither the <script>, nor the onerror handler, nor the
        # javascript: link ran.
        browser.find_element(By.ID, 'jslink').click()
        time.sleep(0.5)
        assert browser.find_element(By.ID, 'target').text == 'script did not run'
    finally:
        browser.switch_to.default_content()
    for handle in browser.window_handles[1:]:
        # A link opens a new tab (target=_blank); close whatever opened.
        browser.switch_to.window(handle)
        browser.close()
    browser.switch_to.window(browser.window_handles[0])
    assert browser.execute_script('return window.received') == []
    assert browser.title != 'pwned'
    assert browser.execute_script('return window.stillTheSamePage') is True


def test_view_url_reloads_and_tabs_show_source_text_headers_raw(browser, inbox):
    from selenium.webdriver.common.by import By
    send(inbox, message('Tabs', html='<p class="x">html &amp; more</p>', text='the text part'))
    open_page(browser, inbox.web_url)
    wait_until(lambda: rows(browser))
    click_row(browser, 0)
    wait_until(lambda: '/view/' in browser.current_url)
    url = browser.current_url
    browser.refresh()       # its own URL: reloading shows the same message
    assert browser.current_url == url
    wait_until(lambda: shown_subject(browser) == 'Tabs')
    browser.find_element(By.ID, 'tab-source').click()
    assert browser.find_element(By.ID, 'source').text.startswith(
        '<p class="x">html &amp; more</p>')
    browser.find_element(By.ID, 'tab-text').click()
    assert browser.find_element(By.ID, 'text').text == 'the text part'
    browser.find_element(By.ID, 'tab-headers').click()
    wait_until(lambda: 'Subject' in browser.find_element(By.ID, 'headers').text)
    browser.find_element(By.ID, 'tab-raw').click()
    wait_until(lambda: 'Subject: Tabs' in browser.find_element(By.ID, 'raw').text)
    href = browser.find_element(By.ID, 'download').get_attribute('href')
    assert href.endswith('/raw?dl=1')
    # Deleted elsewhere (another tab, a test's API call): the open view
    # says so.
    inbox.server.inbox.clear()
    gone = browser.find_element(By.ID, 'gone')
    wait_until(gone.is_displayed)
    assert not browser.find_element(By.ID, 'message').is_displayed()


def test_search_in_the_url_keyboard_and_delete(browser, inbox):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    for name in ('alice', 'bob', 'carol', 'dave', 'eve'):
        send(inbox, message('From %s' % name, sender='%s@example.org' % name))
    open_page(browser, inbox.web_url)
    wait_until(lambda: len(rows(browser)) == 5)

    browser.find_element(By.TAG_NAME, 'body').send_keys('/')   # the search box
    search = browser.switch_to.active_element
    assert search.get_attribute('id') == 'search'
    search.send_keys('from:eve')
    wait_until(lambda: subjects(browser) == ['From eve'])
    # With a search, "Delete all" deletes its results only.
    button = browser.find_element(By.ID, 'delete-all')
    assert button.text == 'Delete results'
    button.click()
    assert button.text == 'Really delete the results?'
    button.click()
    wait_until(lambda: subjects(browser) == [])
    assert len(inbox.server.inbox) == 4
    search.send_keys(Keys.ESCAPE)                   # clears the search
    wait_until(lambda: subjects(browser) == ['From dave', 'From carol', 'From bob', 'From alice'])

    browser.find_element(By.TAG_NAME, 'body').send_keys('/')
    search.send_keys('from:bob')
    wait_until(lambda: subjects(browser) == ['From bob'])
    # The query is in the URL: a reload (or a shared link) keeps it.
    wait_until(lambda: browser.current_url.endswith('/?q=from%3Abob'))
    open_page(browser, browser.current_url)
    wait_until(lambda: subjects(browser) == ['From bob'])
    assert browser.find_element(By.ID, 'search').get_attribute('value') == 'from:bob'
    search = browser.find_element(By.ID, 'search')
    search.click()
    search.send_keys(Keys.ESCAPE)                   # clears the search
    wait_until(lambda: len(rows(browser)) == 4)
    wait_until(lambda: browser.current_url == inbox.web_url)

    press(browser, 'j')                             # the first row
    press(browser, 'j')                             # the second
    assert browser.switch_to.active_element.get_attribute('data-id') is not None
    assert 'From carol' in browser.switch_to.active_element.text
    # '#' deletes the focused row (no message is open); the next row
    # takes the focus.
    press(browser, '#')
    wait_until(lambda: subjects(browser) == ['From dave', 'From bob', 'From alice'])
    assert len(inbox.server.inbox) == 3
    # (The row itself: the page's body holds the text too, while the list
    # is redrawn.)
    wait_until(lambda: browser.switch_to.active_element.get_attribute('data-id')
               and 'From bob' in browser.switch_to.active_element.text)

    press(browser, Keys.ENTER)                      # open it
    wait_until(lambda: shown_subject(browser) == 'From bob')
    # j/k while a message is open open the next and previous message.
    press(browser, 'j')
    wait_until(lambda: shown_subject(browser) == 'From alice')
    press(browser, 'k')
    press(browser, 'k')
    wait_until(lambda: shown_subject(browser) == 'From dave')
    assert '/view/' in browser.current_url
    press(browser, Keys.DELETE)                     # deletes the open one
    wait_until(lambda: subjects(browser) == ['From bob', 'From alice'])
    wait_until(lambda: shown_subject(browser) == 'From bob')   # the next one
    assert len(inbox.server.inbox) == 2
    press(browser, Keys.ESCAPE)                     # back to the list
    wait_until(lambda: not browser.find_element(By.ID, 'view-pane').is_displayed())

    press(browser, '?')                             # the keyboard help
    help = browser.find_element(By.ID, 'help')
    wait_until(help.is_displayed)
    assert 'j' in help.text and 'Delete' in help.text
    press(browser, Keys.ESCAPE)
    wait_until(lambda: not help.is_displayed())

    button = browser.find_element(By.ID, 'delete-all')
    button.click()                                  # asks once more
    assert button.text == 'Really delete all?'
    button.click()
    wait_until(lambda: rows(browser) == [])
    assert len(inbox.server.inbox) == 0


def test_multi_select_mark_read_unread_and_delete(browser, inbox):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    ids = [store(inbox, 'm%d' % i) for i in range(6)]      # m5 is the newest
    read_ids = lambda: {m.id for m in inbox.server.inbox.newest_first() if m.read}  # noqa: E731
    open_page(browser, inbox.web_url)
    wait_until(lambda: len(rows(browser)) == 6)
    assert unread_subjects(browser) == ['m5', 'm4', 'm3', 'm2', 'm1', 'm0']

    click_row(browser, 0, what='.sel')              # m5
    click_row(browser, 2, Keys.SHIFT, what='.sel')
    selection = browser.find_element(By.ID, 'selection')
    assert selection.text == '3 selected'           # m5, m4, m3: a range
    assert ticked(browser) == [True, True, True, False, False, False]
    assert browser.execute_script('var b = document.getElementById("select-all");'
                                  'return [b.checked, b.indeterminate]') == [False, True]
    browser.find_element(By.ID, 'mark-read').click()
    wait_until(lambda: unread_subjects(browser) == ['m2', 'm1', 'm0'])
    wait_until(lambda: read_ids() == set(ids[3:]))
    # Still selected: mark them unread again, one from the keyboard too.
    browser.find_element(By.ID, 'mark-unread').click()
    wait_until(lambda: read_ids() == set())
    wait_until(lambda: len(unread_subjects(browser)) == 6)

    browser.find_element(By.ID, 'select-all').click()     # clears (some were)
    assert selection.text == '' and ticked(browser) == [False] * 6
    browser.find_element(By.ID, 'select-all').click()     # ticks all
    assert selection.text == '6 selected' and ticked(browser) == [True] * 6
    assert browser.find_element(By.ID, 'select-all').is_selected()
    browser.find_element(By.ID, 'select-all').click()
    assert selection.text == '' and ticked(browser) == [False] * 6
    click_row(browser, 4)                        # open m1 (marks it read)
    wait_until(lambda: shown_subject(browser) == 'm1')
    wait_until(lambda: read_ids() == {ids[1]})
    assert unread_subjects(browser) == ['m5', 'm4', 'm3', 'm2', 'm0']
    press(browser, 'm')                             # toggles the open one
    wait_until(lambda: read_ids() == set())
    press(browser, 'x')                             # ticks the open one
    press(browser, 'k')                             # opens m2
    wait_until(lambda: shown_subject(browser) == 'm2')
    press(browser, 'x')
    click_row(browser, 5, holding=Keys.CONTROL)
    assert selection.text == '3 selected'           # m1, m2, and m0 by Ctrl+click
    assert ticked(browser) == [False, False, False, True, True, True]
    browser.find_element(By.ID, 'delete-selected').click()
    wait_until(lambda: subjects(browser) == ['m5', 'm4', 'm3'])
    assert {m.id for m in inbox.server.inbox.newest_first()} == set(ids[3:])
    assert selection.text == ''

    browser.find_element(By.ID, 'mark-all-read').click()
    wait_until(lambda: unread_subjects(browser) == [])
    wait_until(lambda: read_ids() == set(ids[3:]))
    # (The count follows the stats event, a moment after the change.)
    wait_until(lambda: 'unread' not in browser.find_element(By.ID, 'count').text)


def test_dense_rows_names_dates_dark_mode(browser, inbox):
    from selenium.webdriver.common.by import By
    last_year = time.time() - 400 * 86400
    store(inbox, 'an old one', sender='Old Sender <old@example.org>', received=last_year)
    for i in range(40):
        store(inbox, 'Message %d with a subject' % i,
              sender='Person %d <p%d@example.org>' % (i, i),
              body='A snippet of the body text that goes on. ' * 4)
    open_page(browser, inbox.web_url)
    wait_until(lambda: len(rows(browser)) == 41)
    assert browser.get_window_size() == {'width': 1280, 'height': 900}
    # One- or two-line rows: at least 15 whole rows in the window.
    visible = browser.execute_script("""
        var bottom = window.innerHeight, n = 0, tallest = 0;
        document.querySelectorAll('#list .item').forEach(function (e) {
          var r = e.getBoundingClientRect();
          tallest = Math.max(tallest, r.height);
          if (r.top >= 0 && r.bottom <= bottom) n++;
        });
        return [n, tallest, parseFloat(getComputedStyle(document.querySelector('#list .row')).lineHeight)];
    """)
    print('rows visible at 1280x900: %d (each %.0f px)' % (visible[0], visible[1]))
    assert visible[0] >= 15
    assert visible[1] <= 2 * visible[2] + 12        # two lines and padding
    # The name with the address on hover; date and time, the full date on
    # hover.
    old = row_cells(browser, 40)
    assert (old['from'], old['from title']) == ('Old Sender', 'old@example.org')
    year = time.strftime('%Y', time.localtime(last_year))
    assert year in old['when'] and ':' in old['when']
    assert year in old['when title'] and len(old['when title']) > len(old['when'])
    today = row_cells(browser, 0)['when']
    assert today.startswith('Today, ') and ':' in today

    def luminance(element_id):
        rgb = browser.execute_script(
            'return getComputedStyle(document.getElementById(arguments[0]))'
            '.backgroundColor', element_id)
        r, g, b = [int(x) for x in rgb[rgb.index('(') + 1:rgb.index(')')].split(',')[:3]]
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    with color_scheme(browser, 'light'):
        assert luminance('list-pane') > 200
    with color_scheme(browser, 'dark'):
        assert luminance('list-pane') < 60
        text = browser.execute_script(
            'return getComputedStyle(document.querySelector("#list .subj")).color')
        assert text.startswith('rgb(2')             # light text on dark
        # A message's own HTML keeps a white page (mail is written for one).
        assert luminance('html-frame') > 250


def test_remote_images_toggle_and_inline_images_apart(browser, inbox):
    from selenium.webdriver.common.by import By
    hits = []

    class Images(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.send_header('Content-Type', 'image/png')
            self.send_header('Content-Length', str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args):
            pass

    # "Remote": another origin (the inbox's CSP allows only its own).
    images = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Images)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    try:
        remote = 'http://127.0.0.1:%d/pixel.png' % images.server_address[1]
        html = ('<p id="p">Hi <img id="logo" src="cid:logo@app">'
                '<img id="remote" src="%s"></p>' % remote)
        send(inbox, message('Plain', html='<p>nothing remote</p>'))
        send(inbox, message('Images', html=html, attachment=('report.pdf', b'%PDF')))
        open_page(browser, inbox.web_url)
        wait_until(lambda: len(rows(browser)) == 2)
        click_row(browser, 0)
        wait_until(lambda: shown_subject(browser) == 'Images')
        # Inline images are listed apart from the attachments.
        attachments = browser.find_element(By.ID, 'attachments').text
        inline = browser.find_element(By.ID, 'inline')
        assert attachments.startswith('report.pdf') and 'logo' not in attachments
        assert inline.text.startswith('logo.png') and 'report' not in inline.text
        assert inline.find_element(By.TAG_NAME, 'img').get_attribute('naturalWidth') == '1'

        def remote_width():
            browser.switch_to.frame(browser.find_element(By.ID, 'html-frame'))
            try:
                img = wait_until(lambda: browser.find_elements(By.ID, 'remote'))[0]
                wait_until(lambda: browser.execute_script('return arguments[0].complete', img))
                return browser.execute_script('return arguments[0].naturalWidth', img)
            finally:
                browser.switch_to.default_content()

        toggle = browser.find_element(By.ID, 'remote-images')
        assert toggle.get_attribute('aria-pressed') == 'false'   # off by default
        assert '1 remote image' in browser.find_element(By.ID, 'remote-bar').text
        assert remote_width() == 0 and hits == []
        toggle.click()
        assert toggle.get_attribute('aria-pressed') == 'true'
        wait_until(lambda: remote_width() == 1)
        assert hits == ['/pixel.png']
        # Another message: off again; one without remote images: no toggle.
        click_row(browser, 1)
        wait_until(lambda: shown_subject(browser) == 'Plain')
        assert not browser.find_element(By.ID, 'remote-bar').is_displayed()
        click_row(browser, 0)
        wait_until(lambda: shown_subject(browser) == 'Images')
        assert toggle.get_attribute('aria-pressed') == 'false'
        assert remote_width() == 0 and hits == ['/pixel.png']
    finally:
        images.shutdown()
        images.server_close()


def test_encoded_word_sender_is_shown_decoded_and_to_stays_to(browser, inbox):
    from selenium.webdriver.common.by import By

    def words(text):
        return Header(text, 'utf-8').encode()

    raw = ('From: %s\nTo: %s\nSubject: encoded\n\nbody\n' % (
        words('\u00c4nn Ex\u00e4mple <ann@example.org>'),
        words('Bob <bob@example.org>'))).encode()
    assert raw.startswith(b'From: =?utf-8?')
    send(inbox, raw, to=['bob@example.org'])
    open_page(browser, inbox.web_url)
    wait_until(lambda: rows(browser))
    cells = row_cells(browser, 0)
    assert (cells['from'], cells['from title']) == ('\u00c4nn Ex\u00e4mple', 'ann@example.org')
    assert cells['to'] == 'To: Bob <bob@example.org>'
    click_row(browser, 0)
    wait_until(lambda: shown_subject(browser) == 'encoded')
    meta = browser.find_element(By.ID, 'meta').text
    assert 'From\n\u00c4nn Ex\u00e4mple <ann@example.org>' in meta
    assert 'To\nBob <bob@example.org>' in meta
    assert 'Bcc' not in meta


def test_events_update_the_list_without_polling(browser, inbox):
    from selenium.webdriver.common.by import By
    first = store(inbox, 'first')
    with fake_events(browser):
        open_page(browser, inbox.web_url)
    wait_until(lambda: live_mode(browser) == 'events')
    wait_until(lambda: subjects(browser) == ['first'])
    polls = ('return performance.getEntriesByType("resource").filter(function (e) {'
             ' return e.name.indexOf("/api/web/state") >= 0; }).length')
    count = browser.find_element(By.ID, 'count')

    # Mail the page is not told about does not show: it does not poll.
    second = store(inbox, 'second')
    time.sleep(1.2)
    assert subjects(browser) == ['first'] and browser.execute_script(polls) == 0
    summary = api(inbox, 'api/v1/messages')['messages'][0]
    assert summary['ID'] == second
    # Mailpit's events, as its page gets them.
    browser.execute_script('fakeEvents.emit({Type: "new", Data: arguments[0]})', summary)
    browser.execute_script('fakeEvents.emit({Type: "stats", Data: '
                           '{Total: 2, Unread: 2, Version: "x"}})')
    wait_until(lambda: subjects(browser) == ['second', 'first'])
    assert count.text == '2 messages, 2 unread'
    browser.execute_script('fakeEvents.emit({Type: "update", Data: {ID: arguments[0], Read: true}})', second)
    browser.execute_script('fakeEvents.emit({Type: "update", Data: {ID: arguments[0], Tags: ["signup", "x"]}})', first)
    browser.execute_script('fakeEvents.emit({Type: "stats", Data: {Total: 2, Unread: 1}})')
    wait_until(lambda: unread_subjects(browser) == ['first'])
    assert browser.execute_script(
        'return Array.from(document.querySelectorAll("#list .tags")[1].children,'
        ' function (e) { return e.textContent; })') == ['signup', 'x']
    assert count.text == '2 messages, 1 unread'
    click_row(browser, 1)                        # open "first"
    wait_until(lambda: shown_subject(browser) == 'first')
    inbox.server.inbox.delete([first])
    browser.execute_script('fakeEvents.emit({Type: "delete", Data: {ID: arguments[0]}})', first)
    wait_until(lambda: subjects(browser) == ['second'])
    assert browser.find_element(By.ID, 'gone').is_displayed()
    inbox.server.inbox.clear()
    browser.execute_script('fakeEvents.emit({Type: "truncate", Data: null})')
    wait_until(lambda: subjects(browser) == [])
    assert count.text == '0 messages'
    browser.execute_script('fakeEvents.emit({Type: "nonsense", Data: 1});'
                           'fakeEvents.emit({Type: "new", Data: null});'
                           'fakeEvents.emit({Type: "stats", Data: "x"});'
                           'fakeEvents.emit({Type: "update", Data: "x"});'
                           'fakeEvents.emit(["not", "an", "object"]);'
                           'fakeEvents.sockets[0].onmessage({data: "not json"})')
    assert subjects(browser) == [] and count.text == '0 messages'
    assert browser.execute_script(polls) == 0

    # The socket drops: the page catches up and polls until it is back.
    store(inbox, 'missed')
    browser.execute_script('fakeEvents.fail = true; fakeEvents.close()')
    wait_until(lambda: live_mode(browser) == 'polling')
    wait_until(lambda: subjects(browser) == ['missed'])
    store(inbox, 'polled')
    wait_until(lambda: subjects(browser) == ['polled', 'missed'], timeout=APPEAR_BOUND)
    assert browser.execute_script(polls) > 0
    browser.execute_script('fakeEvents.fail = false')
    wait_until(lambda: live_mode(browser) == 'events', timeout=10)
    time.sleep(0.6)
    polled = browser.execute_script(polls)
    time.sleep(1.2)
    assert browser.execute_script(polls) == polled          # polling stopped


def test_no_event_stream_falls_back_to_polling(browser, inbox):
    with fake_events(browser, fail=True):
        open_page(browser, inbox.web_url)
    wait_until(lambda: live_mode(browser) == 'polling')
    send(inbox, message('polled'))
    wait_until(lambda: subjects(browser) == ['polled'], timeout=APPEAR_BOUND)
    # It keeps trying the socket, less and less often.
    tries = browser.execute_script('return fakeEvents.sockets.length')
    assert 1 <= tries <= 3


def _has_event_stream(controller):
    """Whether the server answers a websocket handshake on /api/events."""
    key = base64.b64encode(os.urandom(16)).decode()
    url = urllib.parse.urlsplit(controller.web_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as s:
        s.sendall(('GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n'
                   'Upgrade: websocket\r\nConnection: Upgrade\r\n'
                   'Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n'
                   % key).encode())
        return s.recv(64).startswith(b'HTTP/1.1 101')


def test_live_events_from_the_server(browser, inbox):
    if not _has_event_stream(inbox):
        pytest.skip('this server has no /api/events websocket yet')
    open_page(browser, inbox.web_url)
    wait_until(lambda: live_mode(browser) == 'events')
    sent = time.monotonic()
    send(inbox, message('live one'))
    wait_until(lambda: subjects(browser) == ['live one'], timeout=APPEAR_BOUND)
    print('new message shown through /api/events after %.3f s' % (time.monotonic() - sent))
    [summary] = api(inbox, 'api/v1/messages')['messages']
    api(inbox, 'api/v1/messages', 'PUT', {'IDs': [summary['ID']], 'Read': True})
    wait_until(lambda: unread_subjects(browser) == [])
    api(inbox, 'api/v1/messages', 'DELETE')         # all: "truncate"
    wait_until(lambda: subjects(browser) == [])
    assert browser.execute_script(
        'return performance.getEntriesByType("resource").filter(function (e) {'
        ' return e.name.indexOf("/api/web/state") >= 0; }).length') == 0


def test_phone_width(browser, inbox):
    from selenium.webdriver.common.by import By
    send(inbox, message('A subject long enough to need cutting on a phone screen '
                        'because it goes on and on', html='<p>x</p>'))
    browser.set_window_size(390, 844)
    open_page(browser, inbox.web_url)
    wait_until(lambda: rows(browser))
    no_sideways_scroll = (
        'return document.documentElement.scrollWidth <= '
        'document.documentElement.clientWidth')
    assert browser.execute_script(no_sideways_scroll)
    click_row(browser, 0)
    back = browser.find_element(By.ID, 'back')
    wait_until(back.is_displayed)
    assert not browser.find_element(By.ID, 'list-pane').is_displayed()
    assert browser.execute_script(no_sideways_scroll)
    back.click()
    wait_until(lambda: browser.find_element(By.ID, 'list-pane').is_displayed())


def test_a_thousand_messages_page_shows_the_newest_hundred(browser, inbox):
    from selenium.webdriver.common.by import By
    for i in range(1000):
        store(inbox, 'bulk %d' % i)
    open_page(browser, inbox.web_url)
    wait_until(lambda: len(rows(browser)) == 100, timeout=30)
    assert browser.find_element(By.ID, 'count').text.startswith('1000 messages')
    assert subjects(browser)[0] == 'bulk 999'
    more = browser.find_element(By.ID, 'more')
    assert more.is_displayed()
    more.click()
    wait_until(lambda: len(rows(browser)) == 200)


# The screenshot's sample mail's logo.
LOGO = (b'<svg xmlns="http://www.w3.org/2000/svg" width="48" height="48" viewBox="0 0 48 48">'
        b'<rect width="48" height="48" rx="11" fill="#2450b2"/>'
        b'<path d="M13 25l7 7 15-16" fill="none" stroke="#fff" stroke-width="5" '
        b'stroke-linecap="round" stroke-linejoin="round"/></svg>')


def test_docs_screenshot(browser, inbox):
    """Saves the docs screenshot when SMTPD_COMPAT_WEB_SCREENSHOT names a
    file; otherwise only checks the page renders the inbox."""
    from selenium.webdriver.common.by import By
    now = time.time()
    samples = [
        ('Your order #1042 has shipped', 'Shop <orders@shop.example>', 'Your parcel is on its way: DHL 00340434161094.'),
        ('Reset your password', 'Security <no-reply@app.example>', 'Someone asked to reset the password of bob@example.org.'),
        ('Invoice 2026-11', 'Billing <billing@shop.example>', 'Please find attached the invoice for November.'),
        ('[CI] build #812 passed', 'CI <ci@build.example>', 'All 2,431 tests passed in 12m 4s on main.'),
        ('Weekly digest: 12 new comments', 'Forum <digest@forum.example>', 'Here is what happened in your threads this week.'),
        ('Your login code is 493201', 'App <no-reply@app.example>', 'Enter 493201 to sign in. It expires in 10 minutes.'),
        ('Meeting notes: Q4 planning', 'Carol Diaz <carol@example.org>', 'Attached are the notes from Tuesday, with the action items.'),
        ('Re: lunch on Friday?', 'Dave Kim <dave@example.org>', 'Sounds good, 12:30 at the usual place.'),
        ('Verify your email address', 'App <no-reply@app.example>', 'Click the link to confirm bob@example.org.'),
        ('Payment received', 'Billing <billing@shop.example>', 'We received your payment of EUR 49.00. Thank you!'),
        ('New sign-in from Firefox on Linux', 'Security <no-reply@app.example>', 'We noticed a new sign-in to your account.'),
        ('Your trial ends in 3 days', 'App Team <hello@app.example>', 'Upgrade now to keep your projects and history.'),
        ('Export ready: contacts.csv', 'App <no-reply@app.example>', 'Your export of 1,204 contacts is ready to download.'),
        ('Password changed', 'Security <no-reply@app.example>', 'The password of your account was changed.'),
        ('Order #1041 confirmed', 'Shop <orders@shop.example>', 'Thanks for your order! We will let you know when it ships.'),
        ('Invitation: design review', 'Erin Park <erin@example.org>', 'You are invited to the design review on Monday at 10:00.'),
        ('Welcome to App', 'App Team <hello@app.example>', 'Welcome aboard, Bob! Confirm your address to get started.'),
    ]
    for i, (subject, sender, body) in enumerate(samples):
        store(inbox, subject, sender=sender, received=now - (len(samples) - i) * 2900, body=body)
    read = [m.id for m in inbox.server.inbox.newest_first()[5:]]
    inbox.server.inbox.set_read(read)
    html = ('<div style="font-family:sans-serif;max-width:520px">'
            '<img src="cid:logo@app" width="48" height="48" alt="App">'
            '<h2 style="color:#23324f">Welcome aboard, Bob!</h2>'
            '<p>Thanks for signing up. Confirm your address to get started:</p>'
            '<p><a href="http://localhost:8000/confirm?token=abc" '
            'style="background:#2450b2;color:#fff;padding:10px 16px;border-radius:6px;'
            'text-decoration:none">Confirm my account</a></p>'
            '<p style="color:#777">If you did not sign up, ignore this mail.</p></div>')
    welcome = message('Welcome to App \u2713', sender='App Team <hello@app.example>',
                      html=html, attachment=('terms-2026.pdf', b'%PDF-1.4 ' + bytes(48000)),
                      text='Welcome aboard, Bob! Confirm your address.')
    logo = welcome.get_payload()[0].get_payload()[1].get_payload()[1]
    logo.set_content(LOGO, 'image', 'svg+xml', cid='<logo@app>', filename='logo.svg',
                     disposition='inline')
    send(inbox, welcome)
    store(inbox, 'Your order #1043 has shipped', sender='Shop <orders@shop.example>',
          body='Your parcel is on its way.')
    # The picture is of a 1280x900 page (the window around it is taller).
    browser.execute_cdp_cmd('Emulation.setDeviceMetricsOverride', {
        'width': 1280, 'height': 900, 'deviceScaleFactor': 1, 'mobile': False})
    try:
        open_page(browser, inbox.web_url)
        wait_until(lambda: len(rows(browser)) == len(samples) + 2)
        click_row(browser, 1)
        wait_until(lambda: shown_subject(browser) == 'Welcome to App \u2713')
        browser.switch_to.frame(browser.find_element(By.ID, 'html-frame'))
        wait_until(lambda: browser.find_elements(By.TAG_NAME, 'h2'))
        browser.switch_to.default_content()
        assert browser.execute_script('return [innerWidth, innerHeight]') == [1280, 900]
        path = os.environ.get('SMTPD_COMPAT_WEB_SCREENSHOT')
        if path:
            browser.execute_script('document.activeElement.blur()')
            time.sleep(0.3)
            assert browser.save_screenshot(path)
    finally:
        browser.execute_cdp_cmd('Emulation.clearDeviceMetricsOverride', {})
