-- Reports may arrive as JUnit XML (Content-Type application/xml or text/xml). The
-- payload column keeps holding the report as JSON, so consumers read one format; the
-- body as the client sent it (the bytes its signature covers) is kept beside it, with
-- its content type. Both are NULL for reports sent as JSON, whose payload already is
-- the body as received.
ALTER TABLE ingestions
    ADD COLUMN original_body text,
    ADD COLUMN original_content_type text
        CHECK (original_content_type IS NULL OR length(original_content_type) <= 255);

-- Same storage as the payload: large XML compresses well and lz4 is cheap.
ALTER TABLE ingestions ALTER COLUMN original_body SET COMPRESSION lz4;

-- Tenant logins insert them (row-level security on ingestions already applies).
GRANT INSERT (original_body, original_content_type) ON ingestions TO anchorpipe_tenant;
