(() => {
  const TASKS = __TASKS__;
  const CHOICES = __CHOICES__;  // per task, the labels of its form choices in order: the digit keys' targets
  const HELP = __SHORTCUTS__;
  const NAVIGATION = '#next-case, #prev-case, #next-unreviewed, #own-images, #open-queue, #order-queue';
  // a queue row opens its case on mousedown (Gradio 6's table selects then; its cells are divs)
  const ROW_CELLS = '#queue-table tbody td, #queue-table [data-testid^="cell-"]';
  let cursor = 0;  // each case starts on DIAG
  let readyToken = null;
  let loadingTimer = null;

  const outline = () => TASKS.forEach((t, i) => {
    const el = document.querySelector(`#correct-${t}`);
    if (el) el.classList.toggle('task-cursor', i === cursor);
  });

  // -- a move to another case: the form is not the new case's until the server says so --------
  const loading = () => document.body.classList.contains('case-loading');
  const startLoading = () => {
    // an error still on screen from before is not this move's failure
    document.querySelectorAll('[data-testid="toast-body"].error').forEach((toast) => { toast.dataset.seen = '1'; });
    document.body.classList.add('case-loading');
    clearTimeout(loadingTimer);
    loadingTimer = setTimeout(stopLoading, 60000);  // never stuck, whatever happened to the move
  };
  const stopLoading = () => { clearTimeout(loadingTimer); document.body.classList.remove('case-loading'); };

  // -- a save (or undo) under way: its answer names the case on screen, so nothing moves until it is in;
  // a field changed after it was sent is still unsaved when the answer says "Saved"
  let savingTimer = null, sent = null, moveAfterSave = null;
  const formValues = () => JSON.stringify(Array.from(document.querySelectorAll('#review-form input, #review-form textarea'))
    .map((el) => (el.type === 'radio' || el.type === 'checkbox') ? el.checked : el.value));
  const saving = () => document.body.classList.contains('saving');
  const startSaving = () => {
    // an error still on screen from before (a save without a verdict) is not this save's answer
    document.querySelectorAll('[data-testid="toast-body"].error').forEach((toast) => { toast.dataset.savingSeen = '1'; });
    sent = formValues();
    document.body.classList.add('saving');
    clearTimeout(savingTimer);
    savingTimer = setTimeout(stopSaving, 60000);
  };
  const stopSaving = () => {
    clearTimeout(savingTimer);
    document.body.classList.remove('saving');
    const move = moveAfterSave;  // a move asked for while the save was under way (n, an arrow, a button) follows it
    moveAfterSave = null;
    if (move) setTimeout(() => { const el = document.querySelector(move); if (el) el.click(); }, 0);
  };
  window.skinnetForm = {  // the save's answer is in: true when the form now differs from what it sent
    answered: () => { const changed = sent !== null && formValues() !== sent; sent = null; stopSaving(); return changed; },
    undone: () => { sent = null; stopSaving(); },  // an undo's answer sets the form itself
  };
  const checkReady = () => {
    const marker = document.querySelector('#form-state .form-ready');
    const token = marker && marker.dataset.token;
    if (token && token !== readyToken) {  // the form now shows the case this token names
      readyToken = token;
      cursor = 0;
      stopLoading();
      keptSay('');
      if (marker.dataset.case) putBack(marker);
    }
    outline();
    const toast = document.querySelector('[data-testid="toast-body"].error');
    if (toast && loading() && !toast.dataset.seen) { toast.dataset.seen = '1'; stopLoading(); }  // the move failed
    document.querySelectorAll('[data-testid="toast-body"].error').forEach((error) => {
      if (!saving() || error.dataset.savingSeen) return;
      error.dataset.savingSeen = '1';
      moveAfterSave = null;  // the save failed: the case stays open, its form as it is
      stopSaving();
    });
    labelOptions();
  };
  new MutationObserver(checkReady).observe(document.documentElement, {childList: true, subtree: true});

  // -- unsaved changes kept through a page reload ----------------------------------------------
  // Once the app answers again after a restart the page reloads (below), and a reviewer may
  // reload by hand: as the page goes, the form of the queue case on screen is kept in this tab's
  // sessionStorage (labels, verdict, confidence and note; never images; gone with the tab) with
  // the form the server had given (the marker's data-form). Its unsaved changes are put back
  // when this tab next shows that case (same queue file, same id) to the same reviewer while
  // the server still gives the same form; if it gives another one (a review saved or withdrawn,
  // a draft kept, in another tab), they are listed instead of put over it.
  const KEPT = 'skinnet-unsaved-forms', MAX_KEPT = 20, KEPT_MS = 24 * 3600 * 1000, PUT_BACK_MS = 6000;
  let restoring = false, putBacks = 0, signingOut = false;
  const readKept = () => {  // what another script or an old version left there is dropped, not trusted
    let kept;
    try { kept = JSON.parse(sessionStorage.getItem(KEPT) || '{}'); } catch (e) { return {}; }
    if (!kept || typeof kept !== 'object' || Array.isArray(kept)) return {};
    Object.keys(kept).forEach((k) => {
      const e = kept[k];
      if (!e || !Array.isArray(e.values) || !Array.isArray(e.given) || typeof e.at !== 'number') delete kept[k];
    });
    return kept;
  };
  const writeKept = (kept) => { try { sessionStorage.setItem(KEPT, JSON.stringify(kept)); } catch (e) { /* storage off or full */ } };
  const keptKey = (m) => `${m.dataset.who}\n${m.dataset.case}`;
  const shownForm = (m) => { try { return JSON.parse(m.dataset.form); } catch (e) { return null; } };
  const formFields = () => [
    (document.querySelector('#verdict input:checked') || {}).value || null,
    ...TASKS.map((t) => { const input = document.querySelector(`#correct-${t} input`); return input ? input.value : null; }),
    (document.querySelector('#confidence input:checked') || {}).value || null,
    (document.querySelector('#review-note textarea, #review-note input') || {}).value || '',
  ];
  // as the log keeps a note (skinnet.corrections.one_line): its line breaks are spaces
  const asLogged = (form) => form && form.map((v, i) => (i === form.length - 1 && v) ? v.replace(/\r/g, '\n').split('\n').join(' ') : v);
  const same = (a, b) => JSON.stringify(asLogged(a)) === JSON.stringify(asLogged(b));
  const described = (form) => {
    const [verdict, ...rest] = form, note = rest.pop(), confidence = rest.pop();
    return [verdict ? `verdict ${verdict}` : '', ...rest.map((label, i) => (label && label !== 'no change') ? `${TASKS[i]} ${label}` : ''),
      confidence ? `confidence ${confidence}` : '', note ? `note "${note}"` : ''].filter(Boolean).join(', ');
  };
  const keptSay = (text) => {  // said in place of the status line, until the next case or save
    let line = document.querySelector('#kept-changes');
    if (!text) { if (line) line.remove(); return; }
    const status = document.querySelector('#save-status');
    if (!status) return;
    if (!line) { line = document.createElement('p'); line.id = 'kept-changes'; line.setAttribute('role', 'status'); status.before(line); }
    line.textContent = text;
  };
  window.addEventListener('pagehide', () => {
    if (signingOut) { try { sessionStorage.removeItem(KEPT); } catch (e) { /* storage off */ } return; }
    const m = document.querySelector('#form-state .form-ready');
    if (!m || !m.dataset.case || !m.dataset.form || restoring) return;  // mid-put-back: the entry is still kept
    const kept = readKept(), given = shownForm(m), values = formFields();
    if (!given || same(values, given)) delete kept[keptKey(m)];  // nothing unsaved
    else kept[keptKey(m)] = {given, values, at: Date.now()};
    Object.keys(kept).sort((a, b) => kept[b].at - kept[a].at).slice(MAX_KEPT).forEach((k) => { delete kept[k]; });
    writeKept(kept);
  });
  window.addEventListener('pageshow', (event) => {
    // back from the browser's back/forward cache: the page is live again and its form is the truth
    // (the next pagehide keeps it afresh); an entry left standing would come back after a change undone
    if (!event.persisted) return;
    const m = document.querySelector('#form-state .form-ready');
    if (m && m.dataset.case) { const kept = readKept(); delete kept[keptKey(m)]; writeKept(kept); }
  });
  document.addEventListener('click', (event) => {  // signing out: nothing of this reviewer's stays in the tab
    if (event.target instanceof Element && event.target.closest('#log-out, #hf-login')) signingOut = true;
  }, true);
  // during a put-back (about a second; never more than PUT_BACK_MS and a dropdown's wait) the
  // reviewer's keys and clicks are not taken: a click would close the dropdown being set, a key
  // would land in it
  const browserKey = (event) => event.type === 'keydown' && event.key !== 'Enter'
    && (event.ctrlKey || event.metaKey || /^F\d+$/.test(event.key));  // a reload, a new tab: the browser's
  ['keydown', 'mousedown', 'pointerdown', 'click'].forEach((type) => window.addEventListener(type, (event) => {
    if (restoring && event.isTrusted && !browserKey(event)) { event.preventDefault(); event.stopImmediatePropagation(); }
  }, true));
  const until = (test, ms) => new Promise((resolve) => {
    const started = Date.now();
    const poll = () => { if (test()) resolve(true); else if (Date.now() - started > ms) resolve(false); else setTimeout(poll, 40); };
    poll();
  });
  const shownToken = () => { const m = document.querySelector('#form-state .form-ready'); return m ? m.dataset.token : null; };
  // a dropdown's choice by its text, as a click picks it (the digit keys and the put-back): true
  // once the dropdown shows it. ``still`` is asked just before the choice is pressed: another case
  // may have arrived while the option list was drawn, and its form is not the one meant
  const chooseText = async (input, wanted, still = () => true) => {
    input.focus(); press(input);
    let options = [];
    await until(() => {  // this dropdown's own option list, once it is drawn (a busy page can take a while)
      const list = document.getElementById(input.getAttribute('aria-controls') || '');
      options = list ? Array.from(list.querySelectorAll('[role="option"]')) : [];
      return options.length > 0;
    }, 3000);
    const option = options.find((o) => o.textContent.replace('✓', '').trim() === wanted);
    const go = Boolean(option) && still();
    if (go) press(option);
    input.blur();
    return go && until(() => input.value === wanted, 2000);
  };
  const putBack = async (m) => {
    const kept = readKept(), key = keptKey(m), entry = kept[key];
    // another reviewer signed in on this tab: what the one before left is not kept for this one
    const others = Object.keys(kept).filter((k) => !k.startsWith(`${m.dataset.who}\n`));
    others.forEach((k) => { delete kept[k]; });
    if (others.length) writeKept(kept);
    if (!entry) return;
    const forget = () => { const now = readKept(); delete now[key]; writeKept(now); };
    if (Date.now() - entry.at > KEPT_MS) { forget(); return; }
    const token = m.dataset.token, wanted = entry.values, what = `case ${m.dataset.name}`;
    const here = () => shownToken() === token;
    putBacks += 1;  // two at once (a case came during another's): the block stays on until both end
    restoring = true;  // from now on a reload keeps the entry as it is
    document.body.classList.add('form-restoring');
    const deadline = Date.now() + PUT_BACK_MS;
    try {
      await new Promise((resolve) => setTimeout(resolve, 150));  // the case's values are drawn with its marker
      if (!here()) return;  // moved on already: kept for the next time this case shows
      if (same(formFields(), wanted)) { forget(); return; }  // nothing to put back (saved before the reload)
      if (!same(shownForm(m), entry.given)) {
        forget();
        keptSay(`Unsaved changes from before the reload not put back: ${what} changed since in another tab (a review ` +
                `saved or withdrawn, or a draft kept), or your last Save went through. They were: ${described(wanted)}.`);
        return;
      }
      const steps = [
        ...[[0, '#verdict'], [TASKS.length + 1, '#confidence']].map(([i, radios]) => () => {
          if (!wanted[i] || formFields()[i] === wanted[i]) return;
          const radio = document.querySelector(`${radios} input[value="${CSS.escape(wanted[i])}"]`);
          if (radio) radio.click();
        }),
        ...TASKS.map((t, i) => async () => {
          const input = document.querySelector(`#correct-${t} input`);
          if (input && wanted[i + 1] && input.value !== wanted[i + 1]) await chooseText(input, wanted[i + 1], here);
        }),
        () => {
          const note = document.querySelector('#review-note textarea, #review-note input');
          const text = wanted[wanted.length - 1];
          if (note && note.value !== text) { note.value = text; note.dispatchEvent(new Event('input', {bubbles: true})); }
        },
      ];
      for (const pass of [1, 2]) {  // a second pass sets what the first could not (a dropdown slow to draw)
        if (pass === 2 && same(formFields(), wanted)) break;
        for (const step of steps) {
          if (!here()) return;  // another case came (not by the reviewer: theirs are not taken): kept for it
          if (Date.now() > deadline) break;  // a page too busy to draw the lists: what is set stays, the rest is listed
          await step();
        }
      }
    } finally {
      putBacks -= 1;
      if (!putBacks) {
        restoring = false;
        document.body.classList.remove('form-restoring');
      }
    }
    if (!here()) return;
    forget();
    keptSay(same(formFields(), wanted)
      ? '✎ Unsaved changes from before the reload are back: press Save (Enter) to keep them.'
      : `Some unsaved changes from before the reload could not be put back into ${what}. They were: ${described(wanted)}.`);
  };

  // -- the app restarted: reload ------------------------------------------------------------
  // Gradio's page reloads itself only when an event was under way as the connection broke: an
  // idle page, or one whose password sign-in went with the old process, showed bare errors.
  // Every 10 s (and when the tab is shown again) the page asks which app answers (a random id
  // per app start); another one reloads it (the form's unsaved changes go through, above).
  const config = window.gradio_config || {};
  let appId = config.app_id ?? null;  // the app this page came from
  const checkApp = async () => {
    if (document.visibilityState === 'hidden' || restoring) return;
    let response;
    try {
      response = await fetch(`${(config.root || '').replace(/\/$/, '')}/gradio_api/app_id`,
                             {credentials: 'same-origin', cache: 'no-store'});
    } catch (e) { return; }  // not answering (restarting): asked again later
    if (!response.ok) return;
    let id = null;
    try { id = (await response.json()).app_id; } catch (e) { return; }
    if (appId === null) appId = id;
    else if (id !== appId) {
      try { sessionStorage.setItem(RESTARTED, String(Date.now())); } catch (e) { /* storage off */ }
      location.reload();
    }
  };
  // after that reload (and a sign-in, if the login went with the old process) the page says why
  // it reloaded and what did not come through: a visitor's uploaded pair is never kept
  const RESTARTED = 'skinnet-restarted', RESTART_NOTE_MS = 30 * 60 * 1000;
  const sayRestarted = async () => {
    let at = 0;
    try { at = Number(sessionStorage.getItem(RESTARTED) || 0); sessionStorage.removeItem(RESTARTED); } catch (e) { return; }
    if (!at || Date.now() - at > RESTART_NOTE_MS) return;
    if (!await until(() => document.querySelector('.disclaimer'), 30000)) return;
    const note = document.createElement('div');
    note.id = 'restart-note';
    note.setAttribute('role', 'status');
    const text = document.createElement('span');
    text.textContent = 'The app restarted and this page reloaded. ' +
      'Uploaded images are never kept: add your pair again if you had one.' +
      (document.querySelector('#intro') ? '' : ' Unsaved changes to a queue case come back when you open it.');
    const close = document.createElement('button');
    close.type = 'button'; close.textContent = '×'; close.setAttribute('aria-label', 'Dismiss');
    close.addEventListener('click', () => note.remove());
    note.append(text, close);
    document.body.append(note);
    setTimeout(() => note.remove(), 60000);
  };
  sayRestarted();
  checkApp();
  setInterval(checkApp, 10000);
  document.addEventListener('visibilitychange', checkApp);

  document.addEventListener('click', (event) => {
    const target = event.target instanceof Element ? event.target : null;
    if (!target) return;
    if (loading() && target.closest('#save-review, #undo-save, #review-form, #queue-filters')) {
      // not the new case's form yet; a filter picked now would be undone by the case's arrival
      event.preventDefault(); event.stopImmediatePropagation(); return;
    }
    if (saving() && target.closest(`${NAVIGATION}, #save-review, #undo-save, #queue-filters`)) {
      event.preventDefault(); event.stopImmediatePropagation();  // the save's answer first
      const button = target.closest('#next-case, #prev-case, #next-unreviewed');
      if (button) moveAfterSave = `#${button.id}`;
      return;
    }
    if (target.closest('#save-review, #undo-save')) { keptSay(''); startSaving(); }
    else if (target.closest(NAVIGATION)) startLoading();
  }, true);
  document.addEventListener('mousedown', (event) => {
    const target = event.target instanceof Element ? event.target : null;
    if (!target || event.button !== 0 || !target.closest(ROW_CELLS)) return;
    if (saving()) { event.preventDefault(); event.stopImmediatePropagation(); return; }  // the save's answer first
    startLoading();
  }, true);

  // -- the digit keys, shown next to the choices they pick ------------------------------------
  const labelOptions = () => TASKS.forEach((t, i) => {
    document.querySelectorAll(`#correct-${t} [role="option"]`).forEach((option) => {
      const text = option.textContent.replace('✓', '').trim();
      const key = CHOICES[i].indexOf(text);
      if (key >= 0 && key <= 9) { if (option.dataset.key !== String(key)) option.dataset.key = String(key); }
      else if (option.dataset.key) delete option.dataset.key;
    });
  });
  const press = (el) => ['mousedown', 'mouseup', 'click'].forEach(
    (type) => el.dispatchEvent(new MouseEvent(type, {bubbles: true, cancelable: true})));
  const markCorrect = () => {
    const correct = document.querySelector('#verdict input[value="correct"]');
    if (correct && !correct.checked) correct.click();
  };
  // a pick takes a moment (the option list is drawn first): keys pressed meanwhile wait for it, in
  // order, instead of landing in the dropdown (a, Enter: then the save takes the pick)
  let picking = 0, keysAfterPick = [], pickInput = null;
  const replayKeys = () => {  // one at a time: a replayed digit starts a pick, and the rest wait for it
    while (!picking && keysAfterPick.length) {
      document.body.dispatchEvent(new KeyboardEvent('keydown', {...keysAfterPick.shift(), bubbles: true, cancelable: true}));
    }
  };
  document.addEventListener('keydown', (event) => {
    if (!picking || !event.isTrusted || ['Shift', 'Control', 'Alt', 'Meta'].includes(event.key)) return;
    const target = event.target;
    const text = target && (target.tagName === 'TEXTAREA' || (target.tagName === 'INPUT' && target.type !== 'radio'
                                                              && target.type !== 'checkbox'));
    if (text && target !== pickInput) return;  // typed into another field (the note): that field's
    keysAfterPick.push({key: event.key, ctrlKey: event.ctrlKey, metaKey: event.metaKey, altKey: event.altKey,
                        shiftKey: event.shiftKey});
    event.preventDefault(); event.stopImmediatePropagation();
  }, true);
  const pick = (n) => {
    const input = document.querySelector(`#correct-${TASKS[cursor]} input`);
    if (!input) return;
    picking += 1;
    pickInput = input;
    const token = shownToken();  // a move on before the list is drawn: the pick is not the next case's
    const still = () => shownToken() === token && !loading();
    chooseText(input, CHOICES[cursor][n], still).then((chosen) => {
      if (chosen && n > 0 && still()) markCorrect();
      setTimeout(() => { picking -= 1; replayKeys(); }, 60);  // keys keep waiting until the pick has settled
    });
  };
  // f: type to filter the outlined task's values (DIAG has 24), arrows and Enter to pick one
  let filtering = null;
  const filter = () => {
    const input = document.querySelector(`#correct-${TASKS[cursor]} input`);
    if (!input) return;
    filtering = input;
    input.focus(); press(input);
    input.value = '';  // what is typed next filters the list (the dropdown listens to its input events)
    input.dispatchEvent(new Event('input', {bubbles: true}));
  };
  const endFilter = (picked) => {
    const input = filtering;
    filtering = null;
    setTimeout(() => {  // after the dropdown took the key
      if (picked && input.value && input.value !== 'no change') markCorrect();
      input.blur();
    }, 60);
  };

  const toggleHelp = () => {
    let panel = document.querySelector('#shortcut-help');
    if (panel) { panel.remove(); return; }
    panel = document.createElement('div');
    panel.id = 'shortcut-help';
    panel.setAttribute('role', 'dialog');
    panel.innerHTML = '<b>Keyboard</b> (not while typing in a field)<table>' +
      HELP.map(([k, v]) => `<tr><td><kbd>${k}</kbd></td><td>${v}</td></tr>`).join('') + '</table>';
    document.body.appendChild(panel);
  };
  document.addEventListener('keydown', (event) => {
    const target = event.target;
    if (filtering && target === filtering) {
      if (event.key === 'Enter') endFilter(true);
      else if (event.key === 'Escape' || event.key === 'Tab') endFilter(false);
      return;
    }
    const typing = target && (target.tagName === 'TEXTAREA' || (target.tagName === 'INPUT' && target.type !== 'radio' && target.type !== 'checkbox'));
    if (event.key === '?' && !typing) { toggleHelp(); event.preventDefault(); return; }
    if (event.key === 'Escape') { const panel = document.querySelector('#shortcut-help'); if (panel) panel.remove(); }
    const shownForm = document.querySelector('#review-form');
    if (saving() && !typing && !event.ctrlKey && !event.metaKey && !event.altKey && shownForm
        && shownForm.offsetParent !== null && !(target instanceof Element && target.closest('#queue-table'))) {
      const moves = {n: '#next-unreviewed', ArrowRight: '#next-case', ArrowLeft: '#prev-case'};
      if (moves[event.key]) moveAfterSave = moves[event.key];  // made once the save's answer is in
    }
    if (loading() || saving()) {  // a move or save is under way: nothing acts on the form, the filters or the case until it is in
      if (event.key === 'Enter' || (!typing && !event.ctrlKey && !event.metaKey && !event.altKey)) event.preventDefault();
      return;
    }
    const table = target instanceof Element ? target.closest('#queue-table') : null;
    // Enter on a queue row opens its case (only while the table is shown: after a row opened its
    // case on the Review tab, a browser may leave the focus on the hidden cell)
    if (table && table.offsetParent !== null && target.closest(ROW_CELLS)) {
      if (event.key === 'Enter') startLoading();
      return;
    }
    const form = document.querySelector('#review-form');
    if (!form || form.offsetParent === null) return;  // the review keys act on the form only while it is shown
    const click = (selector) => { const el = document.querySelector(selector); if (el) { el.click(); event.preventDefault(); } };
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      click('#save-review');
      if (typing) target.blur();  // the keys after a save are the review keys again, not text
      return;
    }
    if (typing || event.altKey || event.ctrlKey || event.metaKey) return;
    const verdicts = {a: 'agree', c: 'correct', u: 'unsure', s: 'skip'};
    if (verdicts[event.key]) click(`#verdict input[value="${verdicts[event.key]}"]`);
    else if (event.key === 'Enter') click('#save-review');
    else if (event.key === 'n') click('#next-unreviewed');
    else if (event.key === 'ArrowRight') click('#next-case');
    else if (event.key === 'ArrowLeft') click('#prev-case');
    else if (event.key === 't' || event.key === 'T') {
      cursor = event.key === 't' ? (cursor + 1) % TASKS.length : (cursor - 1 + TASKS.length) % TASKS.length;
      outline(); event.preventDefault();
    } else if (/^[0-9]$/.test(event.key)) { pick(Number(event.key)); event.preventDefault(); }
    else if (event.key === 'f') { filter(); event.preventDefault(); }
  });

  // zoom (Ctrl + wheel, or a trackpad pinch, which browsers send as one) and pan (drag) on the
  // case's images and the Grad-CAMs; double-click resets
  const ZOOMABLE = '#clinical-input, #dermoscopy-input, #gradcam-clinical, #gradcam-dermoscopy';
  const views = new WeakMap();
  const zoomable = (target) => (target && target.tagName === 'IMG' && target.closest(ZOOMABLE)) ? target : null;
  const show = (img, v) => {
    views.set(img, v);
    img.style.transformOrigin = '0 0';
    img.style.transform = v.s === 1 ? '' : `translate(${v.x}px, ${v.y}px) scale(${v.s})`;
    img.style.cursor = v.s === 1 ? '' : 'grab';
    img.dataset.zoom = v.s.toFixed(2);
    if (img.parentElement) img.parentElement.style.overflow = 'hidden';
  };
  document.addEventListener('wheel', (event) => {
    const img = zoomable(event.target);
    const v = img && (views.get(img) || {s: 1, x: 0, y: 0});
    // a plain wheel over an unzoomed image scrolls the page, up and down, as everywhere else;
    // once an image is zoomed, the plain wheel zooms it further in or back out
    if (!img || event.deltaY === 0 || (v.s === 1 && !(event.ctrlKey || event.metaKey))) return;
    event.preventDefault();
    const rect = img.getBoundingClientRect();
    const px = event.clientX - rect.left, py = event.clientY - rect.top;
    // a wheel notch (120 px) zooms 1.25x; a pinch sends many small steps, each a small zoom
    const pixels = event.deltaY * (event.deltaMode === 1 ? 40 : event.deltaMode === 2 ? 800 : 1);
    const s = Math.min(8, Math.max(1, v.s * Math.pow(1.25, -Math.max(-360, Math.min(360, pixels)) / 120)));
    const k = s / v.s;  // the point under the cursor stays put
    show(img, s === 1 ? {s: 1, x: 0, y: 0} : {s, x: v.x + px * (1 - k), y: v.y + py * (1 - k)});
  }, {passive: false});
  let drag = null;
  document.addEventListener('mousedown', (event) => {
    const img = zoomable(event.target);
    const v = img && views.get(img);
    if (!v || v.s === 1 || event.button !== 0) return;
    drag = {img, x0: event.clientX - v.x, y0: event.clientY - v.y};
    event.preventDefault();
  });
  document.addEventListener('mousemove', (event) => {
    if (!drag) return;
    if (!(event.buttons & 1)) { drag = null; return; }  // the button came up outside the window
    const v = views.get(drag.img);
    show(drag.img, {s: v.s, x: event.clientX - drag.x0, y: event.clientY - drag.y0});
  });
  document.addEventListener('mouseup', () => { drag = null; });
  document.addEventListener('dragstart', (event) => { if (zoomable(event.target)) event.preventDefault(); });
  document.addEventListener('dblclick', (event) => {
    const img = zoomable(event.target);
    if (img) { show(img, {s: 1, x: 0, y: 0}); event.preventDefault(); }
  });
  // a new image starts unzoomed
  document.addEventListener('load', (event) => { const img = zoomable(event.target); if (img) show(img, {s: 1, x: 0, y: 0}); }, true);
})();
