"""schemathesis hooks for the API contract test (scripts/schemathesis.sh).

`/ingest` takes and `/export` returns NDJSON, which the spec declares as
`application/x-ndjson` with a string body; schemathesis has no serializer
for that media type, so send the generated string as it does `text/plain`.
"""

import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "text/plain")
