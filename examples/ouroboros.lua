-- Policy for Ouroboros, the renamed upstream: same schema, its own bucket.
return {
  bucket = os.getenv("RESCLEAN_BUCKET") or "ouroboros-resources",
}
