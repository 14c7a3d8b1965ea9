"""What the uploader, the processor and the results API share; imports none of them."""
