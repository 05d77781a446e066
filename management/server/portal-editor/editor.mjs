// The portal's code editor: CodeMirror 6 with the languages a function is written in, bundled
// by build.sh into ../src/portal/editor.js (one classic script, no module loader), which sets
// `window.WarrenEditor`. app.js drives it through that object only.
import { basicSetup } from 'codemirror';
import { EditorState, Compartment } from '@codemirror/state';
import { EditorView, keymap } from '@codemirror/view';
import { indentWithTab } from '@codemirror/commands';
import { StreamLanguage } from '@codemirror/language';
import { javascript } from '@codemirror/lang-javascript';
import { python } from '@codemirror/lang-python';
import { json } from '@codemirror/lang-json';
import { toml } from '@codemirror/legacy-modes/mode/toml';
import { shell } from '@codemirror/legacy-modes/mode/shell';
import { powerShell } from '@codemirror/legacy-modes/mode/powershell';
import { setDiagnostics, lintGutter } from '@codemirror/lint';

/** The language of a file, by its name. */
function languageOf(path) {
  const ext = (path.match(/\.([^./]+)$/) || [])[1] || '';
  switch (ext.toLowerCase()) {
    case 'js': case 'mjs': case 'cjs': return javascript();
    case 'ts': return javascript({ typescript: true });
    case 'py': return python();
    case 'json': return json();
    case 'toml': return StreamLanguage.define(toml);
    case 'sh': case 'bash': return StreamLanguage.define(shell);
    case 'ps1': return StreamLanguage.define(powerShell);
    default: return [];
  }
}

/**
 * One editor view showing one file at a time; each file keeps its own state (text, undo
 * history, selection) while others are shown.
 *   const ed = WarrenEditor.create(parent, { onChange(path, text) {} });
 *   ed.open(path, text, { readOnly }); ed.text(); ed.showError(line, col, message); ...
 */
function create(parent, { onChange } = {}) {
  const states = new Map();
  let current = null;
  const readOnly = new Compartment();
  const view = new EditorView({ parent });
  const extensions = (path, ro) => [
    basicSetup,
    keymap.of([indentWithTab]),
    lintGutter(),
    languageOf(path),
    readOnly.of([EditorState.readOnly.of(ro), EditorView.editable.of(!ro)]),
    EditorView.updateListener.of((u) => {
      if (u.docChanged && onChange) onChange(path, u.state.doc.toString());
    }),
  ];
  const api = {
    view,
    /** Shows `path` as it was last left, or with `text` the first time (or after `forget`). */
    open(path, text, { readOnly: ro = false } = {}) {
      if (current != null) states.set(current, view.state);
      let st = states.get(path);
      if (!st) st = EditorState.create({ doc: text ?? '', extensions: extensions(path, ro) });
      states.set(path, st);
      current = path;
      view.setState(st);
    },
    /** Forgets a file's state (deleted or renamed). */
    forget(path) { states.delete(path); if (current === path) current = null; },
    path() { return current; },
    text() { return view.state.doc.toString(); },
    /** Marks line `line` (1-based) with an error, scrolls to it and puts the cursor there. */
    showError(line, column, message) {
      const doc = view.state.doc;
      const l = doc.line(Math.min(Math.max(1, line), doc.lines));
      const from = Math.min(l.from + Math.max(0, (column || 1) - 1), l.to);
      view.dispatch(setDiagnostics(view.state, [{ from, to: Math.max(from, l.to), severity: 'error', message }]));
      view.dispatch({ selection: { anchor: from }, effects: EditorView.scrollIntoView(from, { y: 'center' }) });
    },
    clearErrors() { view.dispatch(setDiagnostics(view.state, [])); },
    focus() { view.focus(); },
    destroy() { view.destroy(); states.clear(); },
  };
  return api;
}

window.WarrenEditor = { create };
