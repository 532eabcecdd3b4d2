// A small, safe Markdown renderer for model output.
//
// Model text is untrusted: it is HTML-escaped first, then only the tags made here are added
// (paragraphs, headings, lists, quotes, fenced and inline code, bold, italic, strikethrough,
// links). A link keeps its href only when it is http:, https: or mailto:; anything else
// (javascript:, data:, relative paths) stays plain text. Text that is still streaming renders
// as it stands: an unclosed code fence is a code block up to the end.

const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const SAFE_HREF = /^(https?:\/\/|mailto:)[^\s]+$/i;
const HOLD = "\u0000"; // marks a finished piece of HTML inside text still being formatted

export function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** HTML for `markdown`; every character of it comes from escapeHtml or a fixed tag. */
export function render(markdown) {
  const lines = String(markdown).replace(/\u0000/g, "").replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(/^\s*(`{3,}|~{3,})\s*([\w+#.-]*)/);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1; // the closing fence (or past the end)
      const lang = fence[2] ? ` data-lang="${escapeHtml(fence[2])}"` : "";
      out.push(`<pre${lang}><code>${escapeHtml(body.join("\n"))}</code></pre>`);
      continue;
    }
    if (/^\s*$/.test(line)) {
      i += 1;
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*?)\s*#*\s*$/);
    if (heading) {
      const level = Math.min(heading[1].length + 2, 6); // inside a message: never bigger than the page's own titles
      out.push(`<h${level}>${inline(heading[2])}</h${level}>`);
      i += 1;
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      out.push("<hr>");
      i += 1;
      continue;
    }
    if (/^\s*>/.test(line)) {
      const quoted = [];
      while (i < lines.length && /^\s*>/.test(lines[i])) quoted.push(lines[i++].replace(/^\s*>\s?/, ""));
      out.push(`<blockquote>${render(quoted.join("\n"))}</blockquote>`);
      continue;
    }
    const item = listItem(line);
    if (item) {
      const tag = item.ordered ? "ol" : "ul";
      const start = item.ordered && item.number !== 1 ? ` start="${item.number}"` : "";
      const items = [];
      while (i < lines.length) {
        const next = listItem(lines[i]);
        if (next && next.ordered === item.ordered) {
          items.push(next.text);
        } else if (items.length && /^\s{2,}\S/.test(lines[i]) && !listItem(lines[i])) {
          items[items.length - 1] += "\n" + lines[i].trim(); // a continuation line
        } else {
          break;
        }
        i += 1;
      }
      out.push(`<${tag}${start}>${items.map((t) => `<li>${inline(t)}</li>`).join("")}</${tag}>`);
      continue;
    }
    const paragraph = [];
    while (i < lines.length && !/^\s*$/.test(lines[i]) && !startsBlock(lines[i])) paragraph.push(lines[i++]);
    out.push(`<p>${inline(paragraph.join("\n"))}</p>`);
  }
  return out.join("");
}

function listItem(line) {
  let m = line.match(/^\s*[-*+]\s+(.*)$/);
  if (m) return { ordered: false, text: m[1] };
  m = line.match(/^\s*(\d{1,9})[.)]\s+(.*)$/);
  if (m) return { ordered: true, number: Number(m[1]), text: m[2] };
  return null;
}

function startsBlock(line) {
  return /^\s*(`{3,}|~{3,})/.test(line) || /^#{1,6}\s/.test(line) || /^\s*>/.test(line) || listItem(line) !== null;
}

/** Inline formatting of one block's text (not yet escaped). */
function inline(text) {
  const held = [];
  const hold = (html) => `${HOLD}${held.push(html) - 1}${HOLD}`;
  // code spans first: nothing inside them is formatted
  let s = text.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, _ticks, code) => hold(`<code>${escapeHtml(code.trim() || code)}</code>`));
  s = s.replace(/\[([^\]\n]+)\]\(\s*<?([^\s()<>]+(?:\([^\s()<>]*\))?[^\s()<>]*)>?(?:\s+"[^"\n]*")?\s*\)/g, (whole, label, href) => {
    if (!SAFE_HREF.test(href)) return whole;
    return hold(`<a href="${escapeHtml(href)}" target="_blank" rel="noopener noreferrer nofollow">${emphasis(escapeHtml(label))}</a>`);
  });
  s = emphasis(escapeHtml(s)).replace(/\n/g, "<br>");
  return s.replace(new RegExp(`${HOLD}(\\d+)${HOLD}`, "g"), (_, n) => held[Number(n)]);
}

/** Bold, italic and strikethrough on escaped text. */
function emphasis(s) {
  return s
    .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
    .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
    .replace(/\*([^\s*](?:[^*\n]*?[^\s*])?)\*/g, "<em>$1</em>")
    .replace(/(^|[^\w])_([^\s_](?:[^_\n]*?[^\s_])?)_(?!\w)/g, "$1<em>$2</em>")
    .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>");
}
