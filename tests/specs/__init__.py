"""The trimmed provider OpenAPI documents the mocks validate against, and their extractor."""
