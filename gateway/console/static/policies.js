// The policy pages' own script: our small Rego and JSON tokenizer (syntax colours), the draft editor
// (a coloured copy beneath a transparent textarea) and saving large files. No third-party code, no
// inline handlers; text only ever goes into the page through textContent, never as HTML.
// Without this script the pages still work: plain text with line numbers, a plain textarea.
"use strict";
(function () {
  var REGO_KEYWORDS = ["package", "import", "default", "not", "some", "every", "in", "if", "contains", "else",
                       "with", "as"];
  var CONSTANTS = ["true", "false", "null"];
  var WORD = /[A-Za-z_][A-Za-z0-9_]*/y;
  var NUMBER = /-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?/y;
  var OPERATOR = /:=|==|!=|<=|>=|[=<>+\-*\/%|&]/y;

  function stringEnd(text, i) {  // index after the closing quote (or the end of the line)
    var j = i + 1;
    while (j < text.length) {
      var c = text.charAt(j);
      if (c === "\\") { j += 2; continue; }
      if (c === "\"") { return j + 1; }
      if (c === "\n") { return j; }
      j += 1;
    }
    return text.length;
  }

  function match(re, text, i) {
    re.lastIndex = i;
    var m = re.exec(text);
    return m ? m[0] : null;
  }

  // [[class or "", text], ...] covering the whole text.
  function tokenize(text, lang) {
    var out = [];
    var plain = "";
    var i = 0;
    var lineStart = true;
    function push(cls, part) {
      if (plain) { out.push(["", plain]); plain = ""; }
      out.push([cls, part]);
    }
    while (i < text.length) {
      var c = text.charAt(i);
      var word;
      if (c === "\n") { plain += c; i += 1; lineStart = true; continue; }
      if (lang === "rego" && c === "#") {
        var nl = text.indexOf("\n", i);
        var end = nl < 0 ? text.length : nl;
        push("comment", text.slice(i, end)); i = end; continue;
      }
      if (c === "\"") {
        var close = stringEnd(text, i);
        var rest = text.slice(close).match(/^[ \t]*:(?!=)/);
        push(lang === "json" && rest ? "key" : "string", text.slice(i, close));
        i = close; lineStart = false; continue;
      }
      if (lang === "rego" && c === "`") {
        var tick = text.indexOf("`", i + 1);
        var stop = tick < 0 ? text.length : tick + 1;
        push("string", text.slice(i, stop)); i = stop; lineStart = false; continue;
      }
      if (/[0-9-]/.test(c) && (word = match(NUMBER, text, i)) && word !== "-") {
        push("number", word); i += word.length; lineStart = false; continue;
      }
      if ((word = match(WORD, text, i))) {
        var cls = "";
        if (CONSTANTS.indexOf(word) >= 0) { cls = "constant"; }
        else if (lang === "rego" && REGO_KEYWORDS.indexOf(word) >= 0) { cls = "keyword"; }
        else if (lang === "rego" && text.charAt(i + word.length) === "(") { cls = "function"; }
        else if (lang === "rego" && lineStart) { cls = "rule"; }
        if (cls) { push(cls, word); } else { plain += word; }
        i += word.length; lineStart = false; continue;
      }
      if (lang === "rego" && (word = match(OPERATOR, text, i))) {
        push("op", word); i += word.length; lineStart = false; continue;
      }
      plain += c;
      if (c !== " " && c !== "\t") { lineStart = false; }
      i += 1;
    }
    if (plain) { out.push(["", plain]); }
    return out;
  }

  // Fill `code` with one numbered element per line, the tokens coloured; `hit` (1-based) is marked.
  function render(code, text, lang, hit, ids) {
    var frag = document.createDocumentFragment();
    var number = 1;
    var line = null;
    function newLine() {
      line = document.createElement("span");
      line.className = "line" + (number === hit ? " hit" : "");
      if (ids) { line.id = "L" + number; }
      frag.appendChild(line);
      number += 1;
    }
    newLine();
    tokenize(text, lang).forEach(function (tok) {
      var parts = tok[1].split("\n");
      parts.forEach(function (part, k) {
        if (k > 0) { frag.appendChild(document.createTextNode("\n")); newLine(); }
        if (!part) { return; }
        if (tok[0]) {
          var span = document.createElement("span");
          span.className = "tok-" + tok[0];
          span.textContent = part;
          line.appendChild(span);
        } else {
          line.appendChild(document.createTextNode(part));
        }
      });
    });
    code.replaceChildren(frag);
  }

  function highlightViews(root) {
    root.querySelectorAll("pre.code[data-lang]:not(.overlay)").forEach(function (pre) {
      var code = pre.querySelector("code");
      var lines = Array.prototype.map.call(code.querySelectorAll(".line"), function (l) { return l.textContent; });
      var hitEl = code.querySelector(".line.hit");
      var hit = hitEl ? parseInt(hitEl.id.slice(1), 10) : 0;
      render(code, lines.join("\n"), pre.getAttribute("data-lang"), hit, true);
      if (hit) { var target = code.querySelector(".line.hit"); if (target) { target.scrollIntoView({ block: "center" }); } }
    });
  }

  function keptKey(form) {
    return "portcullis-draft:" + form.getAttribute("data-draft") + ":" + form.getAttribute("data-file") + ":" +
      form.getAttribute("data-revision");
  }

  function setupEditor(root) {
    var editor = root.querySelector(".editor[data-lang]");
    if (!editor) { return; }
    var form = editor.closest("form");
    var area = editor.querySelector("textarea");
    var code = editor.querySelector("pre.overlay code");
    var lang = editor.getAttribute("data-lang");
    var hit = parseInt(editor.getAttribute("data-hit"), 10) || 0;
    var state = form.querySelector("#save-state");
    var pending = false;
    editor.classList.add("live");

    function paint() {
      pending = false;
      render(code, area.value + "\n", lang, hit, false);  // the extra line matches the textarea's scroll height
      sync();
    }
    function sync() {
      code.parentNode.scrollTop = area.scrollTop;
      code.parentNode.scrollLeft = area.scrollLeft;
    }
    function changed() {
      if (!pending) { pending = true; window.requestAnimationFrame(paint); }
      try { window.sessionStorage.setItem(keptKey(form), area.value); } catch (e) { /* storage full or off */ }
    }
    var kept = null;
    try { kept = window.sessionStorage.getItem(keptKey(form)); } catch (e) { kept = null; }
    if (kept !== null && kept !== area.value) {
      area.value = kept;
      if (state) { state.textContent = "Your unsaved text was restored: save it when ready."; }
    }
    area.addEventListener("input", changed);
    area.addEventListener("scroll", sync);
    area.addEventListener("keydown", function (ev) {
      if (!ev.ctrlKey || (ev.key !== "]" && ev.key !== "[")) { return; }
      ev.preventDefault();
      var value = area.value;
      var from = value.lastIndexOf("\n", area.selectionStart - 1) + 1;
      var to = value.indexOf("\n", Math.max(area.selectionEnd - 1, from));
      if (to < 0) { to = value.length; }
      var block = value.slice(from, to);
      var next = ev.key === "]" ? block.replace(/^/gm, "\t") : block.replace(/^(\t| {1,4})/gm, "");
      area.setSelectionRange(from, to);
      if (!document.execCommand("insertText", false, next)) { area.setRangeText(next, from, to, "select"); }
      changed();
    });
    paint();
    if (hit > 0) {  // put the caret on the marked line and show it
      var offset = 0;
      for (var n = 1; n < hit; n += 1) {
        var nl = area.value.indexOf("\n", offset);
        if (nl < 0) { break; }
        offset = nl + 1;
      }
      area.focus();
      area.setSelectionRange(offset, offset);
      area.scrollTop = Math.max(0, (hit - 5) * 20);
      sync();
    }
  }

  // Forms that may carry a large file are sent by script with the X-CSRF-Token header: the console then
  // reads the body itself, up to the bundle limit (a plain form is cut at the listener's 64 KiB).
  function setupBigForms(root) {
    root.querySelectorAll("form[data-big]").forEach(function (form) {
      form.addEventListener("submit", function (ev) {
        ev.preventDefault();
        var data = new FormData(form);
        var state = form.querySelector("#save-state");
        if (state) { state.textContent = "Saving…"; }
        fetch(form.action, {
          method: "POST", body: data, credentials: "same-origin",
          headers: { "X-CSRF-Token": String(data.get("csrf")), "X-Console-Back": String(data.get("back")) }
        }).then(function (r) {
          var path = new URL(r.url).pathname;
          if (r.redirected && path !== "/console/step-up" && form.hasAttribute("data-draft")) {
            try { window.sessionStorage.removeItem(keptKey(form)); } catch (e) { /* nothing kept */ }
          }
          if (r.redirected) { window.location.assign(r.url); return null; }
          return r.text().then(function (html) {
            var doc = new DOMParser().parseFromString(html, "text/html");
            var main = document.getElementById("main");
            var fresh = doc.getElementById("main");
            if (!main || !fresh) { return; }
            main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
            document.title = doc.title;
            setup(main);
            var error = main.querySelector("[role=alert]");
            if (error) { error.setAttribute("tabindex", "-1"); error.focus(); }
          });
        }).catch(function () {
          if (state) { state.textContent = "The gateway could not be reached: nothing was saved. Try again."; }
        });
      });
    });
  }

  function setup(root) {
    highlightViews(root);
    setupEditor(root);
    setupBigForms(root);
  }

  window.portcullisTokenize = tokenize;  // for the browser tests
  document.addEventListener("DOMContentLoaded", function () { setup(document); });
})();
