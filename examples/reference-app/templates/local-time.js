// Every <time datetime> on the page, shown in the reader's own time zone to the second, with
// its offset from UTC. The server writes UTC, which stays as written if this does not run.
for (const t of document.querySelectorAll("time[datetime]")) {
  const d = new Date(t.getAttribute("datetime"));
  if (Number.isNaN(d.getTime())) continue;
  const p = (n) => String(n).padStart(2, "0");
  const east = -d.getTimezoneOffset();
  const off = Math.abs(east);
  t.textContent = d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " +
    p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds()) + " UTC" +
    (east < 0 ? "-" : "+") + p(Math.floor(off / 60)) + ":" + p(off % 60);
}
