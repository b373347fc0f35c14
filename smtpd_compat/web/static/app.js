'use strict';
// The inbox page.  Everything from a message is set with textContent or as
// an attribute value; no message data is ever parsed as HTML here (the HTML
// part only appears inside the sandboxed iframe, served under its own CSP).
(function () {
  var PAGE = 100;
  var state = {version: -1, query: '', limit: PAGE, ids: [], current: null,
               tab: 'html', message: null};
  var $ = function (id) { return document.getElementById(id); };

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
  function addr(a) {
    if (!a) return '';
    return a.Name ? a.Name + ' <' + a.Address + '>' : a.Address;
  }
  function addrs(list) { return (list || []).map(addr).join(', '); }
  function size(n) {
    if (n < 1024) return n + ' B';
    if (n < 1048576) return (n / 1024).toFixed(1) + ' kB';
    return (n / 1048576).toFixed(1) + ' MB';
  }
  function when(iso) {
    var d = new Date(iso);
    if (isNaN(d)) return '';
    var now = new Date();
    if (d.toDateString() === now.toDateString()) return d.toLocaleTimeString();
    return d.toLocaleDateString() + ' ' + d.toLocaleTimeString();
  }

  // -- the list ---------------------------------------------------------------
  function listUrl() {
    var q = '?start=0&limit=' + state.limit;
    if (state.query) return '/api/v1/search' + q + '&query=' + encodeURIComponent(state.query);
    return '/api/v1/messages' + q;
  }
  function loadList() {
    return api(listUrl()).then(renderList).catch(function () {});
  }
  function renderList(data) {
    var list = $('list');
    var focusedId = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.id : null;
    var frag = document.createDocumentFragment();
    state.ids = [];
    data.messages.forEach(function (m) {
      state.ids.push(m.ID);
      var row = el('a', 'row' + (m.Read ? '' : ' unread') + (m.ID === state.current ? ' selected' : ''));
      row.href = '/view/' + encodeURIComponent(m.ID);
      row.dataset.id = m.ID;
      row.setAttribute('role', 'listitem');
      var from = el('span', 'from', addr(m.From) || '(no sender)');
      var whenEl = el('span', 'when', when(m.Created));
      var subj = el('span', 'subj', m.Subject || '(no subject)');
      var right = el('span', 'size', size(m.Size));
      if (m.Attachments) {
        var att = el('span', 'att', String(m.Attachments));
        att.title = m.Attachments + ' attachment(s)';
        att.setAttribute('aria-label', m.Attachments + ' attachments');
        right.appendChild(att);
      }
      var to = el('span', 'to', 'To: ' + addrs(m.To));
      var snip = el('span', 'snippet', m.Snippet);
      [from, whenEl, subj, right, to, snip].forEach(function (c) { row.appendChild(c); });
      frag.appendChild(row);
    });
    list.replaceChildren(frag);
    if (focusedId) {
      var again = list.querySelector('[data-id="' + CSS.escape(focusedId) + '"]');
      if (again) again.focus();
    }
    $('empty').hidden = data.messages.length > 0;
    $('empty').textContent = state.query ? 'No messages match this search.'
      : 'No messages yet. Send mail to the SMTP server and it shows here.';
    $('more').hidden = data.messages_count <= data.messages.length;
    // The whole inbox is listed: a message shown but no longer listed was
    // deleted (here or elsewhere).
    state.complete = !state.query && $('more').hidden;
    $('count').textContent = (state.query ? data.messages_count + ' of ' : '') +
      data.total + ' message' + (data.total === 1 ? '' : 's') +
      (data.unread ? ', ' + data.unread + ' unread' : '');
    document.title = (data.unread ? '(' + data.unread + ') ' : '') + 'Inbox - smtpd_compat';
  }

  // Live updates: poll the inbox's version twice a second; reload the list
  // only when it changed.
  function poll() {
    api('/api/web/state').then(function (s) {
      if (s.version !== state.version) {
        state.version = s.version;
        return loadList().then(function () {
          if (!state.current) return;
          if (state.message === null) showMessage(state.current);
          else if (state.complete && state.ids.indexOf(state.current) < 0) {
            state.message = false;
            $('message').hidden = true;
            $('gone').hidden = false;
          }
        });
      }
    }).catch(function () {}).then(function () {
      setTimeout(poll, document.hidden ? 2000 : 500);
    });
  }

  // -- one message ------------------------------------------------------------
  function route() {
    var m = /^\/view\/([A-Za-z0-9]+)$/.exec(location.pathname);
    if (m) showMessage(m[1]); else showList();
  }
  function go(path) {
    if (location.pathname !== path) history.pushState(null, '', path);
    route();
  }
  function showList() {
    state.current = null;
    state.message = null;
    $('main').classList.remove('viewing');
    $('view-pane').hidden = true;
    markSelected();
  }
  function markSelected() {
    Array.prototype.forEach.call($('list').children, function (row) {
      row.classList.toggle('selected', row.dataset.id === state.current);
    });
  }
  function showMessage(id) {
    state.current = id;
    state.message = null;
    $('main').classList.add('viewing');
    $('view-pane').hidden = false;
    markSelected();
    api('/api/v1/message/' + encodeURIComponent(id)).then(function (m) {
      if (state.current !== id) return;
      state.message = m;
      $('gone').hidden = true;
      $('message').hidden = false;
      render(m);
    }).catch(function (err) {
      if (state.current !== id) return;
      state.message = false;
      $('message').hidden = true;
      $('gone').hidden = false;
    });
  }
  function render(m) {
    var id = encodeURIComponent(m.ID);
    $('subject').textContent = m.Subject || '(no subject)';
    var meta = $('meta');
    meta.replaceChildren();
    [['From', addr(m.From)], ['To', addrs(m.To)], ['Cc', addrs(m.Cc)],
     ['Bcc', addrs(m.Bcc)], ['Reply-To', addrs(m.ReplyTo)],
     ['Date', new Date(m.Date).toLocaleString()], ['Size', size(m.Size)]].forEach(function (f) {
      if (!f[1]) return;
      meta.appendChild(el('dt', null, f[0]));
      meta.appendChild(el('dd', null, f[1]));
    });
    var list = $('attachments');
    list.replaceChildren();
    (m.Attachments || []).concat(m.Inline || []).forEach(function (a) {
      var li = el('li');
      var name = a.FileName || (a.ContentID ? 'inline ' : 'part ') + a.ContentType;
      var link = el('a', null, name + ' (' + size(a.Size) + ')');
      link.href = '/api/v1/message/' + id + '/part/' + encodeURIComponent(a.PartID) + '?dl=1';
      link.title = a.ContentType;
      li.appendChild(link);
      list.appendChild(li);
    });
    $('download').href = '/api/v1/message/' + id + '/raw?dl=1';
    $('text').textContent = m.Text;
    $('headers').replaceChildren();
    $('raw').textContent = '';
    var frame = $('html-frame');
    if (m.HTML) {
      frame.hidden = false;
      $('no-html').hidden = true;
      frame.src = '/view/' + id + '.html?embed=1';
    } else {
      frame.hidden = true;
      frame.removeAttribute('src');
      $('no-html').hidden = false;
    }
    selectTab(m.HTML ? (state.tab === 'text' && m.Text ? 'text' : state.tab) : (state.tab === 'html' ? 'text' : state.tab), false);
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
    if (name === 'headers' && !$('headers').firstChild) {
      api('/api/v1/message/' + id + '/headers').then(function (h) {
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
        api('/api/v1/message/' + id + '/raw').then(function (t) { $('raw').textContent = t; })
          .catch(function () {});
      }
    }
  }
  function deleteIds(ids) {
    return fetch('/api/v1/messages', {method: 'DELETE', headers: {'Content-Type': 'application/json'},
                                      body: JSON.stringify({IDs: ids})});
  }
  function deleteCurrent() {
    if (!state.current) return;
    var id = state.current, i = state.ids.indexOf(id);
    var next = i >= 0 ? (state.ids[i + 1] || state.ids[i - 1]) : null;
    deleteIds([id]).then(function () {
      go(next ? '/view/' + encodeURIComponent(next) : '/');
    });
  }
  var confirmTimer = null;
  function deleteAll() {
    var b = $('delete-all');
    if (!b.classList.contains('confirm')) {
      // A second press within 4 s confirms (no modal dialog).
      b.classList.add('confirm');
      b.textContent = 'Really delete all?';
      confirmTimer = setTimeout(resetDeleteAll, 4000);
      return;
    }
    resetDeleteAll();
    fetch('/api/v1/messages', {method: 'DELETE'}).then(function () { go('/'); });
  }
  function resetDeleteAll() {
    clearTimeout(confirmTimer);
    $('delete-all').classList.remove('confirm');
    $('delete-all').textContent = 'Delete all';
  }

  // -- keyboard ---------------------------------------------------------------
  function moveSelection(step) {
    var rows = Array.prototype.slice.call($('list').children);
    if (!rows.length) return;
    var i = rows.indexOf(document.activeElement);
    if (i < 0) i = rows.findIndex(function (r) { return r.dataset.id === state.current; });
    var next = rows[Math.max(0, Math.min(rows.length - 1, i < 0 ? 0 : i + step))];
    next.focus();
    next.scrollIntoView({block: 'nearest'});
  }
  document.addEventListener('keydown', function (e) {
    var typing = e.target && (e.target.tagName === 'INPUT' || e.target.tagName === 'TEXTAREA');
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (typing) {
      if (e.key === 'Escape') { e.target.value = ''; search(''); e.target.blur(); }
      return;
    }
    if (e.key === '/') { e.preventDefault(); $('search').focus(); }
    else if (e.key === 'j' || e.key === 'ArrowDown') { e.preventDefault(); moveSelection(1); }
    else if (e.key === 'k' || e.key === 'ArrowUp') { e.preventDefault(); moveSelection(-1); }
    else if (e.key === 'Delete' || e.key === '#') { e.preventDefault(); deleteCurrent(); }
    else if (e.key === 'Escape' || e.key === 'u') { go('/'); }
  });

  // -- wiring -----------------------------------------------------------------
  var searchTimer = null;
  function search(q) {
    state.query = q.trim();
    state.limit = PAGE;
    loadList();
  }
  document.addEventListener('DOMContentLoaded', function () {
    $('list').addEventListener('click', function (e) {
      var row = e.target.closest('a.row');
      if (!row || e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey) return;
      e.preventDefault();
      go('/view/' + encodeURIComponent(row.dataset.id));
    });
    $('home').addEventListener('click', function (e) { e.preventDefault(); go('/'); });
    $('back').addEventListener('click', function (e) { e.preventDefault(); go('/'); });
    $('delete').addEventListener('click', deleteCurrent);
    $('delete-all').addEventListener('click', deleteAll);
    $('more').addEventListener('click', function () { state.limit += PAGE; loadList(); });
    $('search-form').addEventListener('submit', function (e) {
      e.preventDefault(); search($('search').value);
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
        t.focus(); selectTab(t.dataset.tab, true);
      });
    });
    window.addEventListener('popstate', route);
    route();
    poll();
  });
})();
