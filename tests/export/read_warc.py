"""Reads a WARC file with warcio (an independent reader) and prints its records as JSON.

Usage: python3 read_warc.py FILE.warc.gz
Digests are checked (a mismatch is an error); gzip_members counts the file's gzip
members (one per record when each record is compressed on its own).
Output: {"records": [{type, target_uri, date, id, concurrent_to, truncated, status,
headers: [[name, value]...], payload_hex}...], gzip_members}
"""
import json
import sys
import zlib

from warcio.archiveiterator import ArchiveIterator


def main(path):
    records = []
    with open(path, "rb") as fh:
        it = ArchiveIterator(fh, check_digests="raise")
        for record in it:
            h = record.rec_headers
            out = {
                "type": record.rec_type,
                "target_uri": h.get_header("WARC-Target-URI"),
                "date": h.get_header("WARC-Date"),
                "id": h.get_header("WARC-Record-ID"),
                "concurrent_to": h.get_header("WARC-Concurrent-To"),
                "truncated": h.get_header("WARC-Truncated"),
                "content_type": h.get_header("Content-Type"),
                "status": None,
                "headers": [],
            }
            if record.http_headers is not None:
                out["status"] = record.http_headers.get_statuscode()
                out["status_line"] = record.http_headers.protocol + " " + record.http_headers.statusline
                out["headers"] = [[n, v] for n, v in record.http_headers.headers]
            payload = record.raw_stream.read()
            out["payload_hex"] = payload.hex()
            records.append(out)
    json.dump({"records": records, "gzip_members": gzip_members(path)}, sys.stdout)


def gzip_members(path):
    """How many gzip members the file holds (one per record, if written right)."""
    with open(path, "rb") as fh:
        data = fh.read()
    count = 0
    while data:
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        member.decompress(data)
        if not member.eof:
            raise SystemExit("a truncated gzip member")
        data = member.unused_data
        count += 1
    return count


if __name__ == "__main__":
    main(sys.argv[1])
