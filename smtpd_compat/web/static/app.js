'use strict';
// The inbox page.  Everything from a message is set with textContent or as
// an attribute value; no message data is ever parsed as HTML here (the HTML
// part only appears inside the sandboxed iframe, served under its own CSP).
//
// Live updates: the page listens on the /api/events websocket, with
// Mailpit's events ({"Type": ..., "Data": ...}: new, update, delete,
// truncate, stats, prune).  While the socket is not open (a server or a
// proxy without it, a restart) the page polls /api/web/state instead and
// tries the socket again, waiting longer each time (up to 30 s).
(function () {
  var PAGE = 100;
  var state = {
    query: '', limit: PAGE, seq: 0,
    messages: [],           // the listed summaries, in list order
    rows: new Map(),        // ID -> its .item element
    selected: new Set(),    // IDs ticked in the list
    anchor: null,           // the last ID ticked (Shift+click selects a range)
    total: 0, unread: 0, matches: 0, complete: false,
    current: null,          // the ID of the open message
    message: null,          // its details; false when it is not in the inbox
    tab: 'html', remote: false,
    live: 'connecting', retries: 0, version: -1, inflight: 0,
    polling: 0, pollRuns: 0,  // the running poll loop's number, 0: none
    focusNext: null         // the ID to focus once the list is rendered again
  };
  var $ = function (id) { return document.getElementById(id); };
  var rowTemplate = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function api(path, options) {
    return fetch(path, options).then(function (r) {
      if (r.status === 404) { var err = new Error('not found'); err.notFound = true; throw err; }
      if (!r.ok) throw new Error(r.status + ' ' + r.statusText);
      var type = r.headers.get('Content-Type') || '';
      return type.indexOf('json') >= 0 ? r.json() : r.text();
    });
  }
  function send(method, path, body) {
    return api(path, {method: method, headers: {'Content-Type': 'application/json'},
                      body: JSON.stringify(body)});
  }
  function addr(a) {
    if (!a) return '';
    return a.Name ? (a.Address ? a.Name + ' <' + a.Address + '>' : a.Name) : a.Address;
  }
  function addrs(list) { return (list || []).map(addr).join(', '); }
  function size(n) {
    if (n < 1024) return n + ' B';
    if (n < 1048576) return (n / 1024).toFixed(1) + ' kB';
    return (n / 1048576).toFixed(1) + ' MB';
  }
  // Formatters are made once: making one per row costs more than the row.
  var fmtTime = new Intl.DateTimeFormat(undefined, {hour: '2-digit', minute: '2-digit'});
  var fmtDay = new Intl.DateTimeFormat(undefined, {month: 'short', day: 'numeric'});
  var fmtDate = new Intl.DateTimeFormat(undefined, {year: 'numeric', month: 'short', day: 'numeric'});
  var fmtFull = new Intl.DateTimeFormat(undefined, {dateStyle: 'full', timeStyle: 'long'});
  function shortDate(d) {
    var now = new Date();
    if (d.toDateString() === now.toDateString()) return 'Today, ' + fmtTime.format(d);
    var day = d.getFullYear() === now.getFullYear() ? fmtDay : fmtDate;
    return day.format(d) + ', ' + fmtTime.format(d);
  }
  function timeZone() {
    try { return Intl.DateTimeFormat().resolvedOptions().timeZone || ''; } catch (e) { return ''; }
  }
  // Mailpit reads before:/after: dates in the tz parameter's zone.
  function tzParam(query) {
    var tz = /\b(before|after):/i.test(query) ? timeZone() : '';
    return tz ? '&tz=' + encodeURIComponent(tz) : '';
  }

  // -- the list ---------------------------------------------------------------
  function listUrl() {
    var q = '?start=0&limit=' + state.limit;
    if (state.query) {
      return '/api/v1/search' + q + '&query=' + encodeURIComponent(state.query) + tzParam(state.query);
    }
    return '/api/v1/messages' + q;
  }
  function loadList() {
    // Answers can arrive out of order (typing a search): only the newest
    // request's answer is shown.
    var seq = ++state.seq;
    state.inflight++;
    return api(listUrl()).then(function (data) {
      if (seq === state.seq) renderList(data);
    }).catch(function () {}).then(function () { state.inflight--; });
  }
  var refreshTimer = null;
  function refreshSoon() {
    // Coalesces a burst of events into one reload.
    if (refreshTimer === null) {
      refreshTimer = setTimeout(function () { refreshTimer = null; loadList(); }, 150);
    }
  }

  function makeRow(m) {
    var item = rowTemplate.cloneNode(true);
    var row = item.lastElementChild, cells = row.children;
    item.dataset.id = m.ID;
    row.dataset.id = m.ID;
    row.href = '/view/' + encodeURIComponent(m.ID);
    if (!m.Read) item.classList.add('unread');
    if (m.ID === state.current) item.classList.add('current');
    if (state.selected.has(m.ID)) { item.classList.add('checked'); item.firstElementChild.checked = true; }
    var from = m.From || {};
    cells[0].textContent = from.Name || from.Address || '(no sender)';
    cells[0].title = from.Address || '';
    var to = m.To || [];
    cells[1].textContent = to.length ? 'To: ' + addr(to[0]) + (to.length > 1 ? ' +' + (to.length - 1) : '') : '';
    if (to.length) cells[1].title = addrs(to);
    cells[2].textContent = m.Subject || '(no subject)';
    fillTags(cells[3], m.Tags);
    cells[4].textContent = m.Snippet || '';
    var sz = cells[5];
    sz.textContent = size(m.Size);
    if (m.Attachments) {
      var att = el('span', 'att', String(m.Attachments));
      att.title = m.Attachments + (m.Attachments === 1 ? ' attachment' : ' attachments');
      sz.insertBefore(att, sz.firstChild);
    }
    var d = new Date(m.Created), when = cells[6];
    if (!isNaN(d)) {
      when.textContent = shortDate(d);
      when.title = fmtFull.format(d);
      when.dateTime = m.Created;
    }
    state.rows.set(m.ID, item);
    return item;
  }
  function fillTags(cell, tags) {
    cell.textContent = '';
    (tags || []).forEach(function (t) { cell.appendChild(el('span', 'tag', t)); });
  }
  function renderList(data) {
    var list = $('list');
    var focused = focusedId();
    var frag = document.createDocumentFragment();
    state.messages = data.messages;
    state.rows = new Map();
    for (var i = 0; i < data.messages.length; i++) frag.appendChild(makeRow(data.messages[i]));
    list.replaceChildren(frag);
    // Ticked messages no longer listed are no longer ticked.
    state.selected.forEach(function (id) { if (!state.rows.has(id)) state.selected.delete(id); });
    var again = state.rows.get(state.focusNext) || state.rows.get(focused);
    state.focusNext = null;
    if (again && (focused || document.activeElement === document.body)) again.lastElementChild.focus();
    state.total = data.total;
    state.unread = data.unread;
    state.matches = data.messages_count;
    state.matchesUnread = data.messages_unread;
    // The whole inbox is listed: a message open but no longer listed was
    // deleted (here or elsewhere).
    state.complete = data.messages_count <= data.messages.length;
    if (!state.query && state.complete) checkCurrent();
    showCounts();
  }
  function showCounts() {
    var shown = state.messages.length;
    $('empty').hidden = shown > 0;
    $('empty').textContent = state.query ? 'No messages match this search.'
      : 'No messages yet. Send mail to the SMTP server and it shows here.';
    $('more').hidden = state.matches <= shown;
    var total = state.total + ' message' + (state.total === 1 ? '' : 's');
    $('count').textContent = (state.query ? state.matches + ' of ' : '') + total +
      (state.unread ? ', ' + state.unread + ' unread' : '');
    document.title = (state.unread ? '(' + state.unread + ') ' : '') + 'Inbox - smtpd_compat';
    labelDeleteAll();
    showSelection();
  }
  function checkCurrent() {
    if (state.current && state.message && !state.rows.has(state.current)) showGone();
  }

  // -- selection --------------------------------------------------------------
  function setChecked(id, on) {
    var item = state.rows.get(id);
    if (on) state.selected.add(id); else state.selected.delete(id);
    if (item) { item.classList.toggle('checked', on); item.firstElementChild.checked = on; }
  }
  function toggleSelect(id, range) {
    var ids = state.messages.map(function (m) { return m.ID; });
    var on = !state.selected.has(id);
    if (range && state.anchor !== null && ids.indexOf(state.anchor) >= 0) {
      var a = ids.indexOf(state.anchor), b = ids.indexOf(id);
      on = state.selected.has(state.anchor);
      for (var i = Math.min(a, b); i <= Math.max(a, b); i++) setChecked(ids[i], on);
    } else {
      setChecked(id, on);
    }
    state.anchor = id;
    showSelection();
  }
  function clearSelection() {
    state.selected.forEach(function (id) { setChecked(id, false); });
    state.anchor = null;
    showSelection();
  }
  function showSelection() {
    var n = state.selected.size, all = $('select-all');
    all.checked = n > 0 && n === state.messages.length;
    all.indeterminate = n > 0 && n < state.messages.length;
    all.disabled = state.messages.length === 0;
    $('selection').textContent = n ? n + ' selected' : '';
    ['mark-read', 'mark-unread', 'delete-selected'].forEach(function (b) { $(b).hidden = n === 0; });
    $('mark-all-read').hidden = n > 0;
    $('mark-all-read').disabled = !(state.query ? state.matchesUnread !== 0 : state.unread);
  }

  // -- actions ----------------------------------------------------------------
  function setRead(ids, read) {
    if (!ids.length) return Promise.resolve();    // no IDs would mean "all"
    ids.forEach(function (id) {
      var item = state.rows.get(id);
      if (item) item.classList.toggle('unread', !read);
      state.messages.forEach(function (m) { if (m.ID === id) m.Read = read; });
    });
    return send('PUT', '/api/v1/messages', {IDs: ids, Read: read}).catch(function () {})
      .then(loadList);
  }
  function markAllRead() {
    // As Mailpit's page: with a search, only its results.
    var body = {Read: true};
    var tz = state.query ? tzParam(state.query) : '';
    if (state.query) body.Search = state.query;
    return send('PUT', '/api/v1/messages' + tz.replace('&', '?'), body).catch(function () {})
      .then(loadList);
  }
  function deleteIds(ids) {
    if (!ids.length) return Promise.resolve();    // no IDs would mean "all"
    var gone = new Set(ids);
    var order = state.messages.map(function (m) { return m.ID; });
    // What to show or focus next: the first message after the last one
    // deleted, else the nearest before.
    var last = -1;
    order.forEach(function (id, i) { if (gone.has(id)) last = i; });
    var next = null;
    for (var i = last + 1; i < order.length && next === null; i++) if (!gone.has(order[i])) next = order[i];
    for (i = last - 1; i >= 0 && next === null; i--) if (!gone.has(order[i])) next = order[i];
    ids.forEach(function (id) { state.selected.delete(id); });
    return send('DELETE', '/api/v1/messages', {IDs: ids}).catch(function () {}).then(function () {
      if (state.current && gone.has(state.current)) {
        go(next, true);
      }
      state.focusNext = next;
      return loadList();
    });
  }
  // What a key acts on: the ticked messages, else the focused row, else
  // the open message.
  function targets() {
    if (state.selected.size) return Array.from(state.selected);
    var id = focusedId() || state.current;
    return id ? [id] : [];
  }
  function toggleRead() {
    var ids = targets();
    if (!ids.length) return;
    var first = state.messages.filter(function (m) { return m.ID === ids[0]; })[0];
    setRead(ids, first ? !first.Read : true);
  }
  var confirmTimer = null;
  function labelDeleteAll() {
    var b = $('delete-all'), asking = b.classList.contains('confirm');
    b.textContent = state.query ? (asking ? 'Really delete the results?' : 'Delete results')
      : (asking ? 'Really delete all?' : 'Delete all');
  }
  function deleteAll() {
    var b = $('delete-all');
    if (!b.classList.contains('confirm')) {
      // A second press within 4 s confirms (no modal dialog).
      b.classList.add('confirm');
      labelDeleteAll();
      confirmTimer = setTimeout(resetDeleteAll, 4000);
      return;
    }
    resetDeleteAll();
    var done = state.query
      ? fetch('/api/v1/search?query=' + encodeURIComponent(state.query) + tzParam(state.query), {method: 'DELETE'})
      : fetch('/api/v1/messages', {method: 'DELETE'});
    done.catch(function () {}).then(function () { clearSelection(); go(null); loadList(); });
  }
  function resetDeleteAll() {
    clearTimeout(confirmTimer);
    $('delete-all').classList.remove('confirm');
    labelDeleteAll();
  }

  // -- live updates -----------------------------------------------------------
  function setLive(mode) {
    state.live = mode;
    var dot = $('live');
    dot.dataset.mode = mode;
    dot.title = mode === 'events' ? 'Live: the list updates as mail arrives'
      : 'Polling: no event stream, the list is checked twice a second';
    dot.setAttribute('aria-label', dot.title);
  }
  function connectEvents() {
    var ws, opened = 0;
    try {
      ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/events');
    } catch (e) {
      fallBack(0);
      return;
    }
    ws.onopen = function () {
      opened = Date.now();
      setLive('events');
      state.polling = 0;
      loadList();         // whatever changed before the socket opened
    };
    ws.onmessage = function (e) {
      var event;
      try { event = JSON.parse(e.data); } catch (err) { return; }
      if (event && typeof event === 'object') onEvent(event.Type, event.Data);
    };
    ws.onclose = function () { fallBack(opened); };
  }
  function fallBack(opened) {
    setLive('polling');
    if (!state.polling) {
      state.polling = ++state.pollRuns;
      poll(state.polling);
    }
    // A socket that stayed open a while starts the waits afresh; one that
    // keeps failing (or closing at once) is tried less and less often.
    if (opened && Date.now() - opened > 5000) state.retries = 0;
    setTimeout(connectEvents, Math.min(30000, 1000 * Math.pow(2, state.retries++)));
  }
  function poll(run) {
    if (state.polling !== run) return;
    api('/api/web/state').then(function (s) {
      if (state.polling === run && s.version !== state.version) {
        state.version = s.version;
        return loadList();
      }
    }).catch(function () {}).then(function () {
      setTimeout(function () { poll(run); }, document.hidden ? 2000 : 500);
    });
  }
  function onEvent(type, data) {
    // A list answer on its way may predate this event: list again after.
    if (state.inflight && type !== 'stats') refreshSoon();
    if (type === 'new' && data && data.ID) addMessage(data);
    else if (type === 'update' && data && data.ID) updateMessage(data);
    else if (type === 'delete' && data && data.ID) removeMessage(data.ID);
    else if (type === 'truncate') truncated();
    else if (type === 'stats' && data && typeof data.Total === 'number') {
      state.total = data.Total;
      state.unread = data.Unread || 0;
      // Whole inbox listed but the count disagrees (a message dropped as
      // the inbox filled up): list again.
      if (!state.query && state.complete && state.total !== state.messages.length) refreshSoon();
      showCounts();
    } else if (type === 'prune') refreshSoon();
  }
  function addMessage(m) {
    state.total++;
    if (!m.Read) state.unread++;
    if (state.query) { refreshSoon(); showCounts(); return; }   // the server decides what matches
    if (state.rows.has(m.ID)) return;
    state.messages.unshift(m);
    state.matches++;
    $('list').insertBefore(makeRow(m), $('list').firstChild);
    if (state.messages.length > state.limit) {
      var last = state.messages.pop();
      state.rows.get(last.ID).remove();
      state.rows.delete(last.ID);
      state.selected.delete(last.ID);
      state.complete = false;
    }
    showCounts();
  }
  function updateMessage(d) {
    var item = state.rows.get(d.ID);
    state.messages.forEach(function (m) {
      if (m.ID !== d.ID) return;
      if ('Read' in d) m.Read = d.Read;
      if ('Tags' in d) m.Tags = d.Tags;
    });
    if (!item) return;
    if ('Read' in d) item.classList.toggle('unread', !d.Read);
    if ('Tags' in d) fillTags(item.lastElementChild.children[3], d.Tags);
  }
  function removeMessage(id) {
    var i = state.messages.findIndex(function (m) { return m.ID === id; });
    if (id === state.current && state.message) showGone();
    if (i < 0) return;
    var m = state.messages.splice(i, 1)[0];
    state.matches--;
    state.total--;
    if (!m.Read) state.unread--;
    state.rows.get(id).remove();
    state.rows.delete(id);
    state.selected.delete(id);
    if (!state.complete) refreshSoon();      // fill the page from below
    showCounts();
  }
  function truncated() {
    state.messages = [];
    state.rows = new Map();
    state.selected.clear();
    state.total = state.unread = state.matches = 0;
    state.complete = true;
    $('list').replaceChildren();
    if (state.current && state.message) showGone();
    showCounts();
  }

  // -- one message ------------------------------------------------------------
  function urlFor(id) {
    return (id ? '/view/' + encodeURIComponent(id) : '/') +
      (state.query ? '?q=' + encodeURIComponent(state.query) : '');
  }
  function go(id, replace) {
    var url = urlFor(id);
    if (url !== location.pathname + location.search) {
      history[replace ? 'replaceState' : 'pushState'](null, '', url);
    }
    route();
  }
  function route() {
    var q = new URLSearchParams(location.search).get('q') || '';
    if (q !== state.query) {
      state.query = q;
      $('search').value = q;
      state.limit = PAGE;
      clearSelection();
      loadList();
    }
    var m = /^\/view\/([A-Za-z0-9]+)$/.exec(location.pathname);
    if (m) showMessage(m[1]); else showList();
  }
  function markCurrent() {
    state.rows.forEach(function (item, id) { item.classList.toggle('current', id === state.current); });
  }
  function showList() {
    state.current = null;
    state.message = null;
    $('main').classList.remove('viewing');
    $('view-pane').hidden = true;
    markCurrent();
  }
  function showGone() {
    state.message = false;
    $('message').hidden = true;
    $('gone').hidden = false;
  }
  function showMessage(id) {
    if (id === state.current && state.message) return;
    state.current = id;
    state.message = null;
    state.remote = false;
    $('main').classList.add('viewing');
    $('view-pane').hidden = false;
    markCurrent();
    api('/api/v1/message/' + encodeURIComponent(id)).then(function (m) {
      if (state.current !== id) return;
      state.message = m;
      $('gone').hidden = true;
      $('message').hidden = false;
      // Opening it marked it read (the server did; show it now).
      var item = state.rows.get(id);
      if (item && item.classList.contains('unread')) {
        item.classList.remove('unread');
        state.messages.forEach(function (s) { if (s.ID === id) s.Read = true; });
        if (state.unread > 0) state.unread--;
        showCounts();
      }
      render(m);
    }).catch(function () {
      if (state.current === id) showGone();
    });
  }
  function partUrl(m, part) {
    return '/api/v1/message/' + encodeURIComponent(m.ID) + '/part/' + encodeURIComponent(part.PartID);
  }
  function renderParts(m, parts, listId, boxId, thumbnails) {
    var list = $(listId);
    list.replaceChildren();
    $(boxId).hidden = !parts.length;
    parts.forEach(function (a) {
      var li = el('li');
      var link = el('a');
      var name = a.FileName || (a.ContentID ? a.ContentID : 'part ' + a.PartID);
      // Raster images only: an SVG or anything else stays a link.
      if (thumbnails && /^image\/(png|jpeg|gif|webp|bmp)$/.test(a.ContentType)) {
        var img = el('img');
        img.alt = '';
        img.src = partUrl(m, a);
        link.appendChild(img);
      }
      link.appendChild(document.createTextNode(name + ' (' + size(a.Size) + ')'));
      link.href = partUrl(m, a) + '?dl=1';
      link.title = a.ContentType + (a.ContentID ? ', cid:' + a.ContentID : '');
      li.appendChild(link);
      list.appendChild(li);
    });
  }
  // Image sources in the HTML that load from elsewhere (blocked until the
  // reader asks for them).
  var REMOTE = /(?:src|srcset|background)\s*=\s*["']?\s*(?:https?:)?\/\/|url\(\s*["']?\s*(?:https?:)?\/\//gi;
  function render(m) {
    $('subject').textContent = m.Subject || '(no subject)';
    var meta = $('meta');
    meta.replaceChildren();
    var d = new Date(m.Date);
    [['From', m.From ? [m.From] : []], ['To', m.To], ['Cc', m.Cc], ['Bcc', m.Bcc],
     ['Reply-To', m.ReplyTo], ['Date', isNaN(d) ? '' : fmtFull.format(d)],
     ['Size', size(m.Size)], ['Tags', (m.Tags || []).join(', ')]].forEach(function (f) {
      var value = f[1];
      if (!value || !value.length) return;
      meta.appendChild(el('dt', null, f[0]));
      var dd = el('dd');
      if (typeof value === 'string') dd.textContent = value;
      else {
        value.forEach(function (a, i) {
          if (i) dd.appendChild(document.createTextNode(', '));
          if (a.Name) dd.appendChild(document.createTextNode(a.Name + ' '));
          if (a.Address) dd.appendChild(el('span', 'addr', a.Name ? '<' + a.Address + '>' : a.Address));
        });
      }
      meta.appendChild(dd);
    });
    renderParts(m, m.Attachments || [], 'attachments', 'attachments-box', false);
    renderParts(m, m.Inline || [], 'inline', 'inline-box', true);
    $('download').href = '/api/v1/message/' + encodeURIComponent(m.ID) + '/raw?dl=1';
    $('text').textContent = m.Text;
    $('source').textContent = '';
    $('headers').replaceChildren();
    $('raw').textContent = '';
    var remote = m.HTML ? (m.HTML.match(REMOTE) || []).length : 0;
    $('remote-bar').hidden = !remote;
    $('remote-note').textContent = remote + (remote === 1 ? ' remote image source is' : ' remote image sources are') +
      ' blocked (a sender can see when they load).';
    showRemote();
    showFrame();
    var tab = state.tab;
    if (!m.HTML && (tab === 'html' || tab === 'source')) tab = 'text';
    selectTab(tab, false);
  }
  function showRemote() {
    var b = $('remote-images');
    b.setAttribute('aria-pressed', state.remote ? 'true' : 'false');
    b.textContent = state.remote ? 'Block remote images' : 'Show remote images';
    $('remote-note').hidden = state.remote;
  }
  function showFrame() {
    var m = state.message, frame = $('html-frame');
    if (m && m.HTML) {
      frame.hidden = false;
      $('no-html').hidden = true;
      frame.src = '/view/' + encodeURIComponent(m.ID) + '.html?embed=1' + (state.remote ? '&remote=1' : '');
    } else {
      frame.hidden = true;
      frame.removeAttribute('src');
      $('no-html').hidden = false;
    }
  }
  function selectTab(name, remember) {
    if (remember) state.tab = name;
    document.querySelectorAll('.tabs button').forEach(function (b) {
      var on = b.dataset.tab === name;
      b.setAttribute('aria-selected', on ? 'true' : 'false');
      b.tabIndex = on ? 0 : -1;
    });
    document.querySelectorAll('.panel').forEach(function (p) {
      p.classList.toggle('active', p.dataset.panel === name);
    });
    var m = state.message;
    if (!m) return;
    var id = encodeURIComponent(m.ID);
    if (name === 'source' && !$('source').textContent) {
      $('source').textContent = m.HTML || '';
    }
    if (name === 'headers' && !$('headers').firstChild) {
      api('/api/v1/message/' + id + '/headers').then(function (h) {
        if (state.message !== m) return;
        var table = $('headers');
        Object.keys(h).forEach(function (k) {
          h[k].forEach(function (v) {
            var tr = el('tr');
            tr.appendChild(el('th', null, k));
            tr.appendChild(el('td', null, v));
            table.appendChild(tr);
          });
        });
      }).catch(function () {});
    }
    if (name === 'raw' && !$('raw').textContent) {
      if (m.Size > 2097152) {
        $('raw').textContent = 'The source is ' + size(m.Size) + '; use "Download .eml" to read it.';
      } else {
        api('/api/v1/message/' + id + '/raw').then(function (t) {
          if (state.message === m) $('raw').textContent = t;
        }).catch(function () {});
      }
    }
  }

  // -- keyboard ---------------------------------------------------------------
  function focusedId() {
    var a = document.activeElement;
    var item = a && a.closest ? a.closest('#list .item') : null;
    return item ? item.dataset.id : null;
  }
  function move(step, open) {
    if (!state.messages.length) return;
    var ids = state.messages.map(function (m) { return m.ID; });
    var i = ids.indexOf(focusedId() || state.current);
    var id = ids[i < 0 ? 0 : Math.max(0, Math.min(ids.length - 1, i + step))];
    var row = state.rows.get(id).lastElementChild;
    row.focus();
    row.scrollIntoView({block: 'nearest'});
    if (open && id !== state.current) go(id, true);
  }
  function openHelp() {
    state.helpFrom = document.activeElement;
    $('help').hidden = false;
    $('help-close').focus();
  }
  function closeHelp() {
    $('help').hidden = true;
    if (state.helpFrom && state.helpFrom.focus) state.helpFrom.focus();
  }
  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (!$('help').hidden) {
      if (e.key === 'Escape' || e.key === '?') { e.preventDefault(); closeHelp(); }
      return;
    }
    var t = e.target;
    var typing = t && ((t.tagName === 'INPUT' && t.type !== 'checkbox') ||
                       t.tagName === 'TEXTAREA' || t.isContentEditable);
    if (typing) {
      if (e.key === 'Escape' && t.id === 'search') { t.value = ''; search(''); t.blur(); }
      return;
    }
    var onRow = focusedId() !== null;
    var key = e.key;
    if (key === '?') openHelp();
    else if (key === '/') $('search').focus();
    else if (key === 'j') move(1, state.current !== null);
    else if (key === 'k') move(-1, state.current !== null);
    else if ((key === 'ArrowDown' || key === 'ArrowUp') && (onRow || !state.current)) {
      move(key === 'ArrowDown' ? 1 : -1, false);
    } else if (key === 'o' && onRow) go(focusedId());
    else if (key === 'x' && (onRow || state.current)) toggleSelect(focusedId() || state.current, e.shiftKey);
    else if (key === 'm') toggleRead();
    else if (key === '#' || key === 'Delete') deleteIds(targets());
    else if (key === 'Escape' && state.selected.size) clearSelection();
    else if (key === 'Escape' || key === 'u') { if (state.current) { var id = state.current; go(null); focusRow(id); } }
    else return;
    e.preventDefault();
  }
  function focusRow(id) {
    var item = state.rows.get(id);
    if (item) item.lastElementChild.focus();
  }

  // -- wiring -----------------------------------------------------------------
  function dropBlanks(node) {
    // The row template's indentation: not cloned a thousand times.
    Array.prototype.slice.call(node.childNodes).forEach(function (c) {
      if (c.nodeType === 3 && !c.data.trim()) node.removeChild(c);
      else if (c.nodeType === 1) dropBlanks(c);
    });
  }
  var searchTimer = null;
  function search(q) {
    q = q.trim();
    if (q === state.query) return;
    state.query = q;
    state.limit = PAGE;
    clearSelection();
    history.replaceState(null, '', urlFor(state.current));
    resetDeleteAll();
    loadList();
  }
  function onListClick(e) {
    var item = e.target.closest('.item');
    if (!item) return;
    var id = item.dataset.id;
    if (e.target.classList.contains('sel')) {
      // The box has toggled itself; toggleSelect sets it (and a range)
      // from the selection.  (Cancelling the click would undo that.)
      toggleSelect(id, e.shiftKey);
      return;
    }
    if (!e.target.closest('a.row') || e.button !== 0) return;
    if (e.ctrlKey || e.metaKey || e.shiftKey) {
      // As in Mailpit: Ctrl/Cmd+click ticks a message, Shift+click a range.
      e.preventDefault();
      toggleSelect(id, e.shiftKey);
      return;
    }
    e.preventDefault();
    go(id);
  }
  document.addEventListener('DOMContentLoaded', function () {
    rowTemplate = $('row-template').content.firstElementChild;
    dropBlanks(rowTemplate);
    $('list').addEventListener('click', onListClick);
    $('home').addEventListener('click', function (e) {
      e.preventDefault();
      $('search').value = '';
      search('');
      go(null);
    });
    $('back').addEventListener('click', function (e) { e.preventDefault(); go(null); });
    $('delete').addEventListener('click', function () { if (state.current) deleteIds([state.current]); });
    $('view-unread').addEventListener('click', function () { if (state.current) setRead([state.current], false); });
    $('delete-all').addEventListener('click', deleteAll);
    $('more').addEventListener('click', function () { state.limit += PAGE; loadList(); });
    $('select-all').addEventListener('click', function () {
      // As Gmail's: with some or all ticked it clears, else ticks all.
      if (state.selected.size) clearSelection();
      else {
        state.messages.forEach(function (m) { setChecked(m.ID, true); });
        showSelection();
      }
    });
    $('mark-read').addEventListener('click', function () { setRead(Array.from(state.selected), true); });
    $('mark-unread').addEventListener('click', function () { setRead(Array.from(state.selected), false); });
    $('delete-selected').addEventListener('click', function () { deleteIds(Array.from(state.selected)); });
    $('mark-all-read').addEventListener('click', markAllRead);
    $('remote-images').addEventListener('click', function () {
      state.remote = !state.remote;
      showRemote();
      showFrame();
    });
    $('help-button').addEventListener('click', openHelp);
    $('help-close').addEventListener('click', closeHelp);
    $('help').addEventListener('click', function (e) { if (e.target === $('help')) closeHelp(); });
    $('search-form').addEventListener('submit', function (e) {
      e.preventDefault();
      clearTimeout(searchTimer);
      search($('search').value);
    });
    $('search').addEventListener('input', function () {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(function () { search($('search').value); }, 200);
    });
    document.querySelectorAll('.tabs button').forEach(function (b) {
      b.addEventListener('click', function () { selectTab(b.dataset.tab, true); });
      b.addEventListener('keydown', function (e) {
        if (e.key !== 'ArrowRight' && e.key !== 'ArrowLeft') return;
        var tabs = Array.prototype.slice.call(document.querySelectorAll('.tabs button'));
        var i = tabs.indexOf(b) + (e.key === 'ArrowRight' ? 1 : -1);
        var t = tabs[(i + tabs.length) % tabs.length];
        t.focus();
        selectTab(t.dataset.tab, true);
      });
    });
    document.addEventListener('keydown', onKey);
    window.addEventListener('popstate', route);
    state.query = new URLSearchParams(location.search).get('q') || '';
    $('search').value = state.query;
    route();
    // The list is loaded once the socket opens, or by the first poll when
    // it fails: one request, and nothing missed in between.  A socket that
    // neither opens nor fails within a second does not hold it up.
    connectEvents();
    setTimeout(function () { if (!state.seq) loadList(); }, 1000);
  });
})();
